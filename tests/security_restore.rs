//! Security: restore never writes outside its target, never follows a symlink it did not create, and leaves nothing half-written.

#[allow(unused_imports)]
use crate::util::*;
