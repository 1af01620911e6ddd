//! One page of a listing across this node's pools, in id order. A volume or
//! snapshot id starts with its pool's prefix (`v1:<pool>:<node>:`), so the
//! pools are walked in prefix order and each is asked only for the names
//! after the token and for as many as the page still lacks.

use crate::{error::Error, pools::Pool};
use std::{future::Future, sync::Arc};

/// The entries after the id `after` (empty: from the first), at most `max`
/// (0: all), and whether more follow. `pools` pairs each pool with the id
/// prefix of its entries; `page(pool, after_name, left)` asks one pool.
/// Pools that are not running are passed over when `every_pool` (a listing
/// of the whole node); a listing of one pool reports it.
pub async fn across_pools<'a, T, F, Fut>(
    mut pools: Vec<(String, Arc<dyn Pool>)>,
    after: &'a str,
    max: u32,
    every_pool: bool,
    mut page: F,
) -> Result<(Vec<T>, bool), Error>
where
    F: FnMut(Arc<dyn Pool>, Option<&'a str>, usize) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, bool), Error>>,
{
    pools.sort_by(|a, b| a.0.cmp(&b.0));
    let mut left = if max == 0 { usize::MAX } else { max as usize };
    let (mut out, mut more) = (Vec::new(), false);
    for (prefix, p) in pools {
        let from = match after.strip_prefix(prefix.as_str()) {
            Some(name) => Some(name),
            None if after < prefix.as_str() => None,
            None => continue, // every id of this pool sorts before `after`
        };
        if left == 0 {
            more = true;
            break;
        }
        match page(p, from, left).await {
            Ok((entries, pool_more)) => {
                left -= entries.len();
                more |= pool_more;
                out.extend(entries);
            }
            Err(Error::PoolNotRunning { .. }) if every_pool => {}
            Err(e) => return Err(e),
        }
    }
    Ok((out, more))
}
