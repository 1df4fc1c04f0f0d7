//! What node1 serves, from the profile: the config files its boot service
//! and the nodes read (`render`: dnsmasq, exports, pxelinux with the nodes'
//! `nfsroot=`, cluster.env, kerrighed_nodes), and the cluster's user
//! (`accounts`). The node1 stage (`stages::node1`) writes them into the
//! layers; the boot service itself is `overlay/node1`.

pub(crate) mod accounts;
mod programs;
pub(crate) mod render;
pub mod status;
