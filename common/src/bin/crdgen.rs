//! Prints the StoragePool CustomResourceDefinition, derived from the code.
//! The chart's copy (charts/pool-csi/crds/) is this output; a test keeps
//! them equal, so the CRD is never edited by hand.

fn main() {
    print!("{}", pool_csi_common::crd_yaml());
}
