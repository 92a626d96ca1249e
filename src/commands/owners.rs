//! User and group names on this machine: ingest records them beside the
//! numeric ids, restore gives files back to the same names.
//!
//! Ids differ between machines (`backup` is 34 here and 1004 there); names
//! are what an administrator means. A name the restoring machine does not
//! know keeps the recorded id, as tar and borg do; `--numeric-owner` keeps
//! every id as it was.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, CString};

use crate::format::record::{MAX_OWNER_NAME, Owners};
use crate::repo::catalog::Node;

/// Calls a reentrant passwd/group lookup with a buffer that grows until
/// the entry fits; None if there is no such entry.
fn lookup<T>(mut call: impl FnMut(&mut [libc::c_char]) -> (i32, bool, Option<T>)) -> Option<T> {
    let mut len = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; len];
        let (rc, found, value) = call(&mut buf);
        if rc == libc::ERANGE && len < 1 << 20 {
            len *= 4;
            continue;
        }
        return if rc == 0 && found { value } else { None };
    }
}

fn user_name(uid: u32) -> Option<Vec<u8>> {
    lookup(|buf| {
        // SAFETY: getpwuid_r writes into `pw` and `buf`, both live for the
        // call; the name is copied out before either goes away.
        unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut out: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
            let name = (!out.is_null() && !pw.pw_name.is_null())
                .then(|| CStr::from_ptr(pw.pw_name).to_bytes().to_vec());
            (rc, !out.is_null(), name)
        }
    })
}

fn group_name(gid: u32) -> Option<Vec<u8>> {
    lookup(|buf| {
        // SAFETY: as in `user_name`, for getgrgid_r.
        unsafe {
            let mut gr: libc::group = std::mem::zeroed();
            let mut out: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out);
            let name = (!out.is_null() && !gr.gr_name.is_null())
                .then(|| CStr::from_ptr(gr.gr_name).to_bytes().to_vec());
            (rc, !out.is_null(), name)
        }
    })
}

fn user_id(name: &[u8]) -> Option<u32> {
    let c = CString::new(name).ok()?;
    lookup(|buf| {
        // SAFETY: as in `user_name`, for getpwnam_r with a NUL-terminated name.
        unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut out: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
            (rc, !out.is_null(), Some(pw.pw_uid))
        }
    })
}

fn group_id(name: &[u8]) -> Option<u32> {
    let c = CString::new(name).ok()?;
    lookup(|buf| {
        // SAFETY: as in `user_name`, for getgrnam_r with a NUL-terminated name.
        unsafe {
            let mut gr: libc::group = std::mem::zeroed();
            let mut out: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out);
            (rc, !out.is_null(), Some(gr.gr_gid))
        }
    })
}

/// A name fit to be recorded (what `Owners::decode` accepts).
fn recordable(name: Vec<u8>) -> Option<Vec<u8>> {
    (!name.is_empty()
        && name.len() <= MAX_OWNER_NAME
        && !name.iter().any(|b| matches!(b, 0 | b':' | b'/' | b'\n')))
    .then_some(name)
}

/// The names of these ids on this machine (ids without a name are left out).
pub fn names_of(uids: &BTreeSet<u32>, gids: &BTreeSet<u32>) -> Owners {
    Owners {
        users: uids
            .iter()
            .filter_map(|&u| Some((u, recordable(user_name(u)?)?)))
            .collect(),
        groups: gids
            .iter()
            .filter_map(|&g| Some((g, recordable(group_name(g)?)?)))
            .collect(),
    }
}

/// Recorded ids to this machine's, where a recorded name is known here
/// under another id.
#[derive(Default)]
pub struct OwnerMap {
    users: HashMap<u32, u32>,
    groups: HashMap<u32, u32>,
}

impl OwnerMap {
    /// The map for a snapshot's owners; empty (every id kept) when
    /// `numeric` or when the names mean the same ids here.
    pub fn new(owners: &Owners, numeric: bool) -> OwnerMap {
        if numeric {
            return OwnerMap::default();
        }
        let moved = |list: &[(u32, Vec<u8>)], find: fn(&[u8]) -> Option<u32>| {
            list.iter()
                .filter_map(|(id, name)| Some((*id, find(name)?)))
                .filter(|(from, to)| from != to)
                .collect()
        };
        OwnerMap {
            users: moved(&owners.users, user_id),
            groups: moved(&owners.groups, group_id),
        }
    }

    /// Give `n` this machine's ids for its recorded owner and group.
    pub fn apply(&self, n: &mut Node) {
        if let Some(&u) = self.users.get(&n.meta.uid) {
            n.meta.uid = u;
        }
        if let Some(&g) = self.groups.get(&n.meta.gid) {
            n.meta.gid = g;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named_and_maps_to_itself() {
        let o = names_of(&BTreeSet::from([0]), &BTreeSet::from([0]));
        assert_eq!(o.user(0), Some(&b"root"[..]));
        assert_eq!(o.group(0), Some(&b"root"[..]));
        assert!(OwnerMap::new(&o, false).users.is_empty());
        // A snapshot that called id 4242 "root" gives its files to root.
        let elsewhere = Owners {
            users: vec![
                (4242, b"root".to_vec()),
                (4243, b"no-such-user-here".to_vec()),
            ],
            groups: vec![],
        };
        let m = OwnerMap::new(&elsewhere, false);
        assert_eq!(m.users.get(&4242), Some(&0));
        assert_eq!(m.users.get(&4243), None);
        assert!(OwnerMap::new(&elsewhere, true).users.is_empty());
    }
}
