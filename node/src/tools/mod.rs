//! One file per external tool: the only code that knows a tool's flags and
//! output, and what its exit codes mean.

pub mod blkid;
pub mod growfs;
pub mod iscsi;
pub mod loopdev;
pub mod losetup;
pub mod lvm;
pub mod lvm_label;
pub mod lvm_shell;
pub mod lvm_system;
pub mod mkfs;
pub mod multipath;
pub mod netmount;
pub mod partx;
pub mod persist;
pub mod ploop;
pub mod qemu_img;
pub mod qemu_nbd;
pub mod qsd;
pub mod scsi;
pub mod sfdisk;
