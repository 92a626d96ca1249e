//! Security: other local users: private repositories, locks and leases, a nosuid/nodev mount that enforces ACLs, a root-only history view.

#[allow(unused_imports)]
use crate::util::*;
