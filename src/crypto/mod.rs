//! Repository encryption: the keys, and nothing that stores data.
//!
//! - [`aead`]: sealing bytes with XChaCha20-Poly1305 under a 32-byte [`Key`]
//!   (`nonce ‖ ciphertext ‖ tag`), the one cipher every encrypted object uses
//! - [`keys`]: the repository's master key, the subkeys derived from it,
//!   and the parameters of the passphrase KDF (Argon2id)
//! - [`slots`]: the key slots (`keys/<id>.key`) that wrap the master key
//!   under passphrases: create, list, unlock, remove, change a passphrase
//! - [`password`]: where a passphrase comes from (a file, a command, the
//!   terminal), never from the command line
//! - [`paper`]: the master key as text to print and type back
//!
//! Nothing here implements a primitive: the cipher, Argon2id and BLAKE3 come
//! from their crates, and this module only composes them. It uses only the
//! base modules (the error type, the clock), so the on-disk format code
//! can seal with it.

pub mod aead;
pub mod keys;
pub mod paper;
pub mod password;
pub mod slots;

pub use aead::Key;
pub use keys::{KdfParams, MasterKey, Subkeys};
pub use password::{
    PassphraseSource, read_another_passphrase, read_new_passphrase, read_passphrase,
};
pub use slots::{
    SlotId, SlotInfo, change_passphrase, create_slot, list_slots, remove_slot, unlock,
};

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Fill `buf` from the operating system's random number generator.
///
/// Its failure is an I/O error of the generator (on Linux, `getrandom(2)`
/// before the pool is ready on an old kernel, or a seccomp filter), so it is
/// reported as one rather than as damage or bad input.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Io {
        path: PathBuf::from("the system's random number generator (getrandom)"),
        source: match e.raw_os_error() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::other(e.to_string()),
        },
    })
}

/// From the moment a secret enters the process: no core dump of a crash
/// holds it, and other processes of the same user can neither attach to
/// this one nor read its memory through /proc (the process becomes
/// "non-dumpable"; its /proc files belong to root). Called before every
/// passphrase or key is read; the setting lasts for the process's life and
/// passes to no program it runs.
pub(crate) fn keep_out_of_dumps() {
    // SAFETY: PR_SET_DUMPABLE takes plain integers and touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if r != 0 {
        log::warn!(
            "cannot keep this process out of core dumps: {}",
            std::io::Error::last_os_error()
        );
    }
}
