//! Security: the copy receiver (`serve`, a local target) trusts nothing the sender says; append-only serving.

#[allow(unused_imports)]
use crate::util::*;
