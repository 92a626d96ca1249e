//! Where a bucket is and how to sign for it, from the places AWS tools read
//! them: `AWS_ENDPOINT_URL` (here: one or more, comma-separated, nodes of
//! one cluster), `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or `AWS_PROFILE` in
//! `~/.aws/credentials` and `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`,
//! `AWS_CONFIG_FILE`), and `AWS_CA_BUNDLE` for a private CA.
//!
//! Pure functions of the environment and the files' text, so each rule is
//! tested without a network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// `s3://BUCKET/PREFIX`: a bucket and the key prefix (without a trailing
/// slash, possibly empty) under which one repository lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
}

impl S3Location {
    /// `s3://BUCKET[/PREFIX]`; None if `s` is not an s3:// URL at all.
    /// Bucket names follow S3's rules (3–63 of `a-z0-9.-`); prefix parts
    /// are plain names (no `.`/`..`, no empty part), so a key can never
    /// climb out of the prefix.
    pub fn parse(s: &str) -> Option<Result<S3Location>> {
        let rest = s.strip_prefix("s3://")?;
        let bad = |why: &str| Some(Err(Error::invalid(format!("{s}: {why}"))));
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && !bucket.starts_with(['.', '-'])
            && !bucket.ends_with(['.', '-']);
        if !bucket_ok {
            return bad("not a bucket name (3 to 63 of a-z, 0-9, '.', '-')");
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty()
            && prefix.split('/').any(|p| {
                p.is_empty()
                    || p == "."
                    || p == ".."
                    || p.bytes().any(|b| b.is_ascii_control() || b == b'\\')
            })
        {
            return bad("the prefix must be plain names separated by '/'");
        }
        Some(Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }))
    }

    /// The full key of `name` (e.g. `config`, `packs/ab/….pack`).
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }
}

/// An access key; the secret is wiped when dropped and never printed.
#[derive(Clone)]
pub struct AccessKey {
    pub id: String,
    pub secret: Zeroizing<String>,
    pub token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKey({}, ..)", self.id)
    }
}

/// Everything needed to reach a bucket.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// Nodes of one cluster, tried in turn when one stops answering.
    pub endpoints: Vec<String>,
    pub region: String,
    /// Path-style URLs (`https://host/bucket/key`): what self-hosted
    /// servers need; AWS's own endpoint uses virtual hosts.
    pub path_style: bool,
    pub key: AccessKey,
    /// PEM file of the CAs to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Bytes per second sent and received at most (0: no limit).
    pub limit_upload: u64,
    pub limit_download: u64,
}

/// The environment, as a function (tests pass a map).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn var(env: Env, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

impl S3Settings {
    /// Settings from the environment and the AWS files under `home`;
    /// `endpoints` from the command line (`--s3-endpoint`) come first.
    pub fn from_env(env: Env, home: Option<&Path>, endpoints: &[String]) -> Result<S3Settings> {
        let profile = var(env, "AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let read = |file_var: &str, default: &str| -> Option<String> {
            let path = var(env, file_var)
                .map(PathBuf::from)
                .or_else(|| home.map(|h| h.join(".aws").join(default)))?;
            std::fs::read_to_string(path).ok()
        };
        let credentials_file = read("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let config_file = read("AWS_CONFIG_FILE", "config");
        let from_profile = |text: &Option<String>, section: &str| -> HashMap<String, String> {
            text.as_deref()
                .map(|t| ini_section(t, section))
                .unwrap_or_default()
        };
        let creds = from_profile(&credentials_file, &profile);
        // ~/.aws/config names sections "profile NAME", except "default".
        let config_section = if profile == "default" {
            profile.clone()
        } else {
            format!("profile {profile}")
        };
        let config = from_profile(&config_file, &config_section);

        let key = match (
            var(env, "AWS_ACCESS_KEY_ID"),
            var(env, "AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => AccessKey {
                id,
                secret: Zeroizing::new(secret),
                token: var(env, "AWS_SESSION_TOKEN").map(Zeroizing::new),
            },
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::invalid(
                    "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither",
                ));
            }
            (None, None) => match (
                creds.get("aws_access_key_id"),
                creds.get("aws_secret_access_key"),
            ) {
                (Some(id), Some(secret)) => AccessKey {
                    id: id.clone(),
                    secret: Zeroizing::new(secret.clone()),
                    token: creds
                        .get("aws_session_token")
                        .map(|t| Zeroizing::new(t.clone())),
                },
                _ => {
                    return Err(Error::invalid(format!(
                        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                         or give profile {profile:?} in ~/.aws/credentials"
                    )));
                }
            },
        };
        let region = var(env, "AWS_REGION")
            .or_else(|| var(env, "AWS_DEFAULT_REGION"))
            .or_else(|| config.get("region").cloned())
            .unwrap_or_else(|| "us-east-1".to_string());
        let mut list: Vec<String> = endpoints.to_vec();
        if list.is_empty() {
            let given = var(env, "AWS_ENDPOINT_URL_S3")
                .or_else(|| var(env, "AWS_ENDPOINT_URL"))
                .or_else(|| config.get("endpoint_url").cloned());
            if let Some(given) = given {
                list = given
                    .split(',')
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty())
                    .collect();
            }
        }
        let path_style = !list.is_empty();
        if list.is_empty() {
            list.push(format!("https://s3.{region}.amazonaws.com"));
        }
        for e in &list {
            let ok = (e.starts_with("https://") || e.starts_with("http://"))
                && !e.contains(['@', '?', '#', ' ']);
            if !ok {
                return Err(Error::invalid(format!(
                    "S3 endpoint {e:?} is not an http:// or https:// URL of a host"
                )));
            }
        }
        Ok(S3Settings {
            endpoints: list,
            region,
            path_style,
            key,
            ca_file: var(env, "AWS_CA_BUNDLE").map(PathBuf::from),
            limit_upload: 0,
            limit_download: 0,
        })
    }
}

/// The `key = value` pairs of `[section]` in an INI file as AWS writes them
/// (keys lowercased; `#` and `;` start comments).
fn ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn s3_urls_parse_and_hostile_ones_are_refused() {
        let loc = S3Location::parse("s3://my-bucket/backups/host1/")
            .expect("s3")
            .expect("valid");
        assert_eq!(loc.bucket, "my-bucket");
        assert_eq!(loc.key("config"), "backups/host1/config");
        let bare = S3Location::parse("s3://bucket").expect("s3").expect("ok");
        assert_eq!(bare.key("config"), "config");
        assert!(S3Location::parse("/srv/repo").is_none());
        for bad in [
            "s3://B",
            "s3://ab",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3://bucket/a/./b",
            "s3://-bucket/x",
            "s3://bucket/a\nb",
        ] {
            assert!(
                S3Location::parse(bad).expect("s3").is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn settings_come_from_variables_then_the_profile_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let aws = dir.path().join(".aws");
        std::fs::create_dir(&aws).expect("mkdir");
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = defsecret\n\
             [work]\n# a comment\naws_access_key_id=WORK\naws_secret_access_key=worksecret\n",
        )
        .expect("write");
        std::fs::write(
            aws.join("config"),
            "[profile work]\nregion = eu-west-3\nendpoint_url = http://10.0.0.1:3900\n",
        )
        .expect("write");
        let env = env_of(&[("AWS_PROFILE", "work")]);
        let s = S3Settings::from_env(&env, Some(dir.path()), &[]).expect("settings");
        assert_eq!(s.key.id, "WORK");
        assert_eq!(s.key.secret.as_str(), "worksecret");
        assert_eq!(s.region, "eu-west-3");
        assert_eq!(s.endpoints, vec!["http://10.0.0.1:3900"]);
        assert!(s.path_style);
        // Variables win; several endpoints, comma-separated.
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "VAR"),
            ("AWS_SECRET_ACCESS_KEY", "varsecret"),
            ("AWS_REGION", "garage"),
            (
                "AWS_ENDPOINT_URL",
                "http://127.0.0.1:3900, http://127.0.0.2:3900",
            ),
        ]);
        let s = S3Settings::from_env(&env, Some(dir.path()), &[]).expect("settings");
        assert_eq!(s.key.id, "VAR");
        assert_eq!(s.endpoints.len(), 2);
        assert!(!format!("{s:?}").contains("varsecret"), "{s:?}");
        // Without an endpoint: AWS itself, virtual-host style.
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "B")]);
        let s = S3Settings::from_env(&env, None, &[]).expect("settings");
        assert_eq!(s.endpoints, vec!["https://s3.us-east-1.amazonaws.com"]);
        assert!(!s.path_style);
        // Half a key, or none, is an error that says what to set.
        let env = env_of(&[("AWS_ACCESS_KEY_ID", "A")]);
        assert!(S3Settings::from_env(&env, None, &[]).is_err());
        let env = env_of(&[]);
        let e = S3Settings::from_env(&env, None, &[]).expect_err("no key");
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "A"),
            ("AWS_SECRET_ACCESS_KEY", "B"),
            ("AWS_ENDPOINT_URL", "ftp://x"),
        ]);
        assert!(S3Settings::from_env(&env, None, &[]).is_err());
    }
}
