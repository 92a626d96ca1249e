//! Security: damaged and hostile repository bytes (packs, blobs, trees, records, config) give clear errors, never panics, aborts, hangs or unbounded allocations.

#[allow(unused_imports)]
use crate::util::*;
