//! A paper copy of a repository's master key (`snapfs key export` and
//! `key import`), for the day every passphrase is forgotten or `keys/` is
//! lost: printed, kept in a safe, typed back in by hand.
//!
//! ```text
//! snapfs paper key, version 1
//! repository 6f1c…(64 hex digits)
//! 1: 3a9f 01c2 77de 5b10  e4
//! 2: …                    ..
//! 3: …
//! 4: …
//! check: 9c31a7f2
//! ```
//!
//! Each line holds 8 bytes of the key as hex groups and one check byte, so
//! a typing mistake is found and named by its line; the last line checks
//! the whole key against the repository's id, so a paper of another
//! repository is refused. Spaces and letter case do not matter when it is
//! read back. The checks are BLAKE3 under contexts of their own: they say
//! whether the text was typed right, nothing about the key to anyone
//! without it beyond what the key itself would.

use std::fmt::Write as _;

use zeroize::Zeroizing;

use super::aead::Key;
use super::keys::MasterKey;
use crate::error::{Error, Result};

const TITLE: &str = "snapfs paper key, version 1";
const CONTEXT_LINE: &str = "snapfs paper key line check";
const CONTEXT_WHOLE: &str = "snapfs paper key whole check";
/// Key bytes per line.
const PER_LINE: usize = 8;
const LINES: usize = Key::LEN / PER_LINE;

fn line_check(index: usize, bytes: &[u8]) -> u8 {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT_LINE);
    h.update(&[index as u8]);
    h.update(bytes);
    h.finalize().as_bytes()[0]
}

fn whole_check(repo_id: &[u8], key: &[u8]) -> [u8; 4] {
    let mut h = blake3::Hasher::new_derive_key(CONTEXT_WHOLE);
    h.update(repo_id);
    h.update(key);
    let mut out = [0u8; 4];
    out.copy_from_slice(&h.finalize().as_bytes()[..4]);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The paper text of `master` for the repository `repo_id` (kept in memory
/// that is wiped when dropped).
pub fn export(master: &MasterKey, repo_id: &[u8]) -> Zeroizing<String> {
    let key = master.key().as_bytes();
    let mut out = Zeroizing::new(String::new());
    let _ = writeln!(out, "{TITLE}");
    let _ = writeln!(out, "repository {}", hex(repo_id));
    for (i, part) in key.chunks(PER_LINE).enumerate() {
        let groups: Vec<String> = part.chunks(2).map(hex).collect();
        let _ = writeln!(
            out,
            "{}: {}  {:02x}",
            i + 1,
            groups.join(" "),
            line_check(i, part)
        );
    }
    let _ = writeln!(out, "check: {}", hex(&whole_check(repo_id, key)));
    out
}

/// The master key typed back from `text`, for the repository `repo_id`.
/// Every mistake is named: a line that does not match its check, a
/// missing line, a paper of another repository.
pub fn import(text: &str, repo_id: &[u8]) -> Result<MasterKey> {
    let bad = |what: String| Error::invalid(format!("paper key: {what}"));
    let mut key = Zeroizing::new([0u8; Key::LEN]);
    let mut seen = [false; LINES];
    let mut check: Option<Vec<u8>> = None;
    for raw in text.lines() {
        let line = raw.trim();
        let words = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() || words.eq_ignore_ascii_case(TITLE) {
            continue;
        }
        let Some((label, rest)) = line.split_once(':').or_else(|| line.split_once(' ')) else {
            return Err(bad(format!("cannot read the line {line:?}")));
        };
        let label = label.trim().to_ascii_lowercase();
        let digits: Zeroizing<String> = Zeroizing::new(
            rest.chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase(),
        );
        let bytes = Zeroizing::new(
            unhex(&digits).ok_or_else(|| bad(format!("line {label}: not hex digits")))?,
        );
        match label.as_str() {
            "repository" => {
                if bytes.as_slice() != repo_id {
                    return Err(bad(
                        "it is the key of another repository (its id differs)".into()
                    ));
                }
            }
            "check" => check = Some(bytes.to_vec()),
            n => {
                let index = n
                    .parse::<usize>()
                    .ok()
                    .filter(|i| (1..=LINES).contains(i))
                    .ok_or_else(|| bad(format!("unknown line {n:?}")))?
                    - 1;
                if bytes.len() != PER_LINE + 1 {
                    return Err(bad(format!(
                        "line {n} has {} hex digits, not {}",
                        digits.len(),
                        (PER_LINE + 1) * 2
                    )));
                }
                if line_check(index, &bytes[..PER_LINE]) != bytes[PER_LINE] {
                    return Err(bad(format!(
                        "line {n} does not match its check: a digit is mistyped"
                    )));
                }
                key[index * PER_LINE..][..PER_LINE].copy_from_slice(&bytes[..PER_LINE]);
                seen[index] = true;
            }
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(bad(format!("line {} is missing", missing + 1)));
    }
    match check {
        Some(c) if c == whole_check(repo_id, key.as_slice()) => {}
        Some(_) => {
            return Err(bad(
                "the key does not match its check line (or the repository's id)".into(),
            ));
        }
        None => return Err(bad("the check line is missing".into())),
    }
    Ok(MasterKey::from_bytes(*key))
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterKey {
        MasterKey::from_bytes(std::array::from_fn(|i| (i * 7 + 3) as u8))
    }

    const ID: [u8; 32] = [0x42; 32];

    #[test]
    fn paper_key_round_trips_whatever_the_spacing_and_case() {
        let text = export(&master(), &ID);
        assert_eq!(text.lines().count(), 2 + LINES + 1, "{}", *text);
        let back = import(&text, &ID).expect("import");
        assert_eq!(back.key().as_bytes(), master().key().as_bytes());
        let retyped: String = text
            .lines()
            .map(|l| format!("  {}\n", l.to_uppercase().replace(' ', "   ")))
            .collect();
        let back = import(&retyped, &ID).expect("import of a retyped paper");
        assert_eq!(back.key().as_bytes(), master().key().as_bytes());
    }

    #[test]
    fn paper_key_names_a_mistyped_or_missing_line_and_another_repository() {
        let text = export(&master(), &ID).to_string();
        let line3 = text.lines().nth(4).expect("line 3").to_string();
        assert!(line3.starts_with("3: "), "{line3}");
        let digit = line3.chars().nth(3).expect("a digit");
        let other = if digit == '0' { '1' } else { '0' };
        let typo = text.replacen(&line3, &line3.replacen(digit, &other.to_string(), 1), 1);
        let e = import(&typo, &ID).expect_err("typo").to_string();
        assert!(e.contains("line 3 does not match"), "{e}");
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with("2: "))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = import(&without, &ID).expect_err("missing").to_string();
        assert!(e.contains("line 2 is missing"), "{e}");
        let e = import(&text, &[0x43; 32]).expect_err("other").to_string();
        assert!(e.contains("another repository"), "{e}");
        let e = import("1: zz", &ID).expect_err("garbage").to_string();
        assert!(e.contains("not hex"), "{e}");
    }
}
