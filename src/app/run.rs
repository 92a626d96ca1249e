//! The `snapfs` command: parse, call one library function, report, exit.
//! Exit codes: 0 success, 1 failure, 3 snapshot made but some files unreadable.

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::app::cli::{Cli, Command, ForgetArgs, IngestArgs, MountArgs};
use crate::app::report;
use crate::commands::{
    copy, diff, find, forget, gc as gc_cmd, ingest as ingest_cmd, log as log_cmd, rebuild,
    restore as restore_cmd, stats as stats_cmd, upgrade as upgrade_cmd, verify as verify_cmd,
};
use crate::error::Result;
use crate::repo::Repository;

pub fn main() -> ExitCode {
    // Everything snapfs creates for itself (repository, catalog, packs,
    // locks, leases, temporary files) is for its owner alone, whatever the
    // caller's umask; restore sets the modes of what it restores explicitly.
    crate::repo::private_umask();
    let cli = Cli::parse();
    crate::repo::set_lock_wait(std::time::Duration::from_secs(cli.lock_wait));
    crate::repo::set_passphrase_source(crate::crypto::PassphraseSource::repository(
        cli.password_file.clone(),
    ));
    if let Some(dir) = &cli.cache_dir {
        crate::repo::set_cache_dir(dir.clone());
    }
    crate::repo::store::set_endpoints(cli.s3_endpoint.clone());
    crate::repo::ssh::set_programs(cli.ssh.clone(), cli.remote_snapfs.clone());
    crate::repo::store::set_limits(
        cli.limit_upload.unwrap_or(0).saturating_mul(1024),
        cli.limit_download.unwrap_or(0).saturating_mul(1024),
    );
    // The FUSE library warns of things that are normal for us (requests we
    // leave unanswered on purpose, a mount already gone when it unmounts):
    // its words only when asked for more.
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn,fuser=error",
        (_, 1) => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .format_target(false)
        .init();
    if cli.quiet {
        crate::commands::progress::disable();
    }
    // Commands that print results end quietly when the reader goes away
    // (`snapfs snapshots | head -1`), as Unix tools do. Those that talk over
    // pipes or serve a mount keep SIGPIPE ignored and see EPIPE as an error.
    if !matches!(
        cli.command,
        Command::Copy { .. } | Command::Serve { .. } | Command::Mount(_)
    ) {
        // SAFETY: restoring the default action of one signal.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(io) = find_io(&e)
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("snapfs: error: {e}");
            if e.is_disk_full() {
                eprintln!(
                    "snapfs: the disk is full; free space and run the command again (earlier snapshots are intact)"
                );
            }
            ExitCode::from(1)
        }
    }
}

fn find_io(e: &crate::Error) -> Option<&std::io::Error> {
    match e {
        crate::Error::Io { source, .. } => Some(source),
        _ => None,
    }
}

/// One function per command below; each opens what it needs and reports.
fn run(cli: Cli) -> Result<ExitCode> {
    let repo = cli.repo.unwrap_or_else(crate::repo::default_path);
    let repo = repo.as_path();
    match cli.command {
        Command::Init {
            compression,
            append_only,
            group,
            encryption,
        } => init(
            repo,
            compression,
            append_only,
            group.as_deref(),
            &encryption,
        ),
        Command::Ingest(a) => ingest(repo, a),
        Command::Snapshots { json } => snapshots(repo, json),
        Command::Restore {
            spec,
            target,
            numeric_owner,
            json,
        } => restore(repo, &spec, &target, numeric_owner, json),
        Command::Forget(a) => forget(repo, a),
        Command::Gc {
            dry_run,
            max_unused,
            allow_delete,
            recompress,
            json,
        } => {
            let opts = gc_cmd::GcOptions {
                dry_run,
                max_unused: max_unused / 100.0,
                allow_delete,
                recompress,
            };
            let repo = open(repo)?;
            report::gc(&gc_cmd::gc(&repo, &opts)?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            read_data,
            read_data_subset,
            json,
        } => verify(repo, read_data, read_data_subset, json),
        Command::RebuildCatalog { force, json } => rebuild_catalog(repo, force, json),
        Command::Upgrade { json } => {
            report::upgrade(&upgrade_cmd::upgrade(repo)?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff {
            from,
            to,
            path,
            json,
        } => diff(repo, &from, &to, path.as_deref(), json),
        Command::Stats { snapshot, json } => stats(repo, snapshot.as_deref(), json),
        Command::Log { path, json } => log(repo, &path, json),
        Command::Find {
            glob,
            snapshot,
            json,
        } => find(repo, &glob, snapshot.as_deref(), json),
        Command::Copy {
            to,
            to_password_file,
            to_encryption,
            json,
            snapshots,
        } => copy_to(
            repo,
            &to,
            &CopyTo {
                ssh: cli.ssh,
                remote_snapfs: cli.remote_snapfs,
                password: crate::crypto::PassphraseSource::destination(to_password_file),
                encryption: to_encryption,
            },
            &snapshots,
            json,
        ),
        Command::Serve { append_only } => {
            copy::remote::serve(repo, copy::remote::ServeOptions { append_only })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            crate::app::cli::print_completions(shell);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => man(&dir),
        Command::Key { action } => key(repo, action),
        Command::Mount(a) => mount(repo, a),
    }
}

fn init(
    repo: &Path,
    compression: i32,
    append_only: bool,
    group: Option<&str>,
    encryption: &str,
) -> Result<ExitCode> {
    let encryption = encryption_named(encryption)?;
    if encryption != crate::repo::Encryption::None && group.is_some() {
        return Err(crate::error::Error::invalid(
            "an encrypted repository cannot be shared with --group yet: its key slots and catalog are its owner's alone; give --encryption none for a shared unencrypted one",
        ));
    }
    let config = crate::repo::Config {
        compression,
        append_only,
        id: Some(crate::repo::RepoId::random()?),
        encryption,
        ..Default::default()
    };
    let group = group.map(crate::repo::group_id).transpose()?;
    Repository::init_shared(repo, config, group)?;
    println!("created repository {}", repo.display());
    Ok(ExitCode::SUCCESS)
}

fn key(repo: &Path, action: crate::app::cli::KeyAction) -> Result<ExitCode> {
    use crate::app::cli::KeyAction;
    use crate::commands::key;
    match action {
        KeyAction::List { json } => report::key_slots(&key::list(repo)?, json),
        KeyAction::Add { new_password_file } => {
            let id = key::add(repo, new_password_file.as_deref())?;
            println!("added key slot {id}");
        }
        KeyAction::Remove { id } => {
            key::remove(repo, &id)?;
            println!("removed key slot {id}");
        }
        KeyAction::Passwd { new_password_file } => {
            let id = key::passwd(repo, new_password_file.as_deref())?;
            println!("the passphrase is changed: key slot {id} replaces the old one");
        }
        KeyAction::Export { output } => {
            key::export(repo, output.as_deref())?;
            if let Some(path) = output {
                eprintln!(
                    "wrote the master key to {}: print it, keep it safe, delete the file",
                    path.display()
                );
            }
        }
        KeyAction::Import {
            input,
            new_password_file,
        } => {
            let id = key::import(repo, input.as_deref(), new_password_file.as_deref())?;
            println!("added key slot {id} from the paper key");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ingest(repo: &Path, a: IngestArgs) -> Result<ExitCode> {
    let repo = open(repo)?;
    let stats = ingest_cmd::ingest(&repo, &a.sources, &a.options())?;
    report::ingest(&stats, a.json);
    Ok(if stats.unreadable > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn snapshots(repo: &Path, json: bool) -> Result<ExitCode> {
    let repo = open(repo)?;
    report::snapshots(&repo.catalog()?.snapshots()?, json);
    Ok(ExitCode::SUCCESS)
}

fn restore(
    repo: &Path,
    spec: &OsStr,
    target: &Path,
    numeric_owner: bool,
    json: bool,
) -> Result<ExitCode> {
    let repo = open(repo)?;
    let _lease = repo.reader_lease("restore")?;
    report::restore(
        &restore_cmd::restore(&repo, spec, target, numeric_owner)?,
        json,
    );
    Ok(ExitCode::SUCCESS)
}

fn forget(repo: &Path, a: ForgetArgs) -> Result<ExitCode> {
    let repo = open(repo)?;
    let decisions = forget::forget(&repo, &a.options()?)?;
    let gc = if a.gc && !a.dry_run {
        let opts = gc_cmd::GcOptions {
            allow_delete: a.allow_delete,
            ..Default::default()
        };
        Some(gc_cmd::gc(&repo, &opts)?)
    } else {
        None
    };
    report::forget(&decisions, a.dry_run, gc.as_ref(), a.json);
    Ok(ExitCode::SUCCESS)
}

fn verify(repo: &Path, read_data: bool, subset: Option<f64>, json: bool) -> Result<ExitCode> {
    let repo = open(repo)?;
    let _lease = repo.reader_lease("verify")?;
    let share = if read_data {
        1.0
    } else {
        subset.unwrap_or(0.0) / 100.0
    };
    let r = verify_cmd::verify(&repo, &verify_cmd::VerifyOptions { read_data: share })?;
    report::verify(&r, json);
    Ok(if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Open the repository at `path`. An encrypted one whose local catalog is
/// missing (another machine, a cleared cache) gets it rebuilt from the
/// packs and the key first, as `rebuild-catalog` would.
fn open(path: &Path) -> Result<Repository> {
    open_from(path, &crate::repo::passphrase_source())
}

/// `open`, an encrypted repository's passphrase read from `src`.
fn open_from(path: &Path, src: &crate::crypto::PassphraseSource) -> Result<Repository> {
    let repo = Repository::open_from(path, src)?;
    // Listings started as the store was opened: for this catch-up only.
    let ahead = repo.take_ahead();
    let local_only =
        repo.config.encryption != crate::repo::Encryption::None || repo.remote.is_some();
    if local_only && !repo.catalog_path().exists() {
        log::warn!(
            "{}: its local catalog ({}) is missing; rebuilding it from the packs",
            path.display(),
            repo.catalog_path().display()
        );
        let r = rebuild::rebuild_catalog(&repo, &rebuild::RebuildOptions { force: false })?;
        if r.replaced {
            repo.set_synced_at_open();
        }
    } else if repo.remote.is_some() {
        // The bucket is the truth: another machine added or removed packs.
        use crate::repo::bucket::{Behind, behind_as_listed, catch_up};
        let listed = match ahead {
            Some(a) => Some(a.join()?),
            None => None,
        };
        let listed_ahead = listed.is_some();
        let behind = match behind_as_listed(&repo, listed)? {
            // Listed while the key was derived: another command here may
            // have stored packs since (the catalog knows them, the listing
            // not). Only a listing made now can say packs are gone.
            Behind::Gone if listed_ahead => behind_as_listed(&repo, None)?,
            b => b,
        };
        let rebuild = match behind {
            Behind::No => false,
            Behind::New { new, doomed, .. } => !catch_up(&repo, &new, &doomed)?,
            Behind::Gone => true,
        };
        if rebuild {
            log::info!(
                "{}: the local catalog cannot follow the store by catching up (packs it knows are gone, another machine forgot snapshots, or a new snapshot needs what it lacks); rebuilding it",
                repo.location()
            );
            let r = rebuild::rebuild_catalog(&repo, &rebuild::RebuildOptions { force: true })?;
            for p in &r.problems {
                log::warn!("{p}");
            }
        }
        repo.set_synced_at_open();
    }
    Ok(repo)
}

fn rebuild_catalog(repo: &Path, force: bool, json: bool) -> Result<ExitCode> {
    let repo = Repository::open(repo)?;
    let r = rebuild::rebuild_catalog(&repo, &rebuild::RebuildOptions { force })?;
    report::rebuild(&r, json);
    if !r.replaced {
        // The text report lists the differences; JSON has them in `worse`.
        let what = if json {
            format!(": {}", r.worse.join("; "))
        } else {
            " (see above)".to_string()
        };
        eprintln!(
            "snapfs: error: the rebuilt catalog holds fewer snapshots, entries or file bytes than the current one{what}; the current catalog is kept; run again with --force to replace it all the same"
        );
    }
    Ok(if r.replaced && r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn diff(repo: &Path, from: &str, to: &str, path: Option<&Path>, json: bool) -> Result<ExitCode> {
    let repo = open(repo)?;
    let _lease = repo.reader_lease("diff")?;
    report::diff(&diff::diff(&repo, from, to, path)?, json);
    Ok(ExitCode::SUCCESS)
}

fn stats(repo: &Path, snapshot: Option<&str>, json: bool) -> Result<ExitCode> {
    let repo = open(repo)?;
    let _lease = repo.reader_lease("stats")?;
    report::stats(&stats_cmd::stats(&repo, snapshot)?, json);
    Ok(ExitCode::SUCCESS)
}

fn log(repo: &Path, path: &Path, json: bool) -> Result<ExitCode> {
    let repo = open(repo)?;
    report::log(&log_cmd::log(&repo, path)?, json);
    Ok(ExitCode::SUCCESS)
}

fn find(repo: &Path, glob: &str, snapshot: Option<&str>, json: bool) -> Result<ExitCode> {
    let repo = open(repo)?;
    report::find(&find::find(&repo, glob, snapshot)?, json);
    Ok(ExitCode::SUCCESS)
}

/// How `copy` reaches and, if need be, creates its destination.
struct CopyTo {
    ssh: String,
    remote_snapfs: String,
    password: crate::crypto::PassphraseSource,
    encryption: Option<String>,
}

/// Whether the repository at ssh URL `to` is kept there as a store: this
/// machine has used it as one before (then the store path, whose pinned
/// config refuses a far side that hid or swapped it, rather than sending
/// plain blobs to a place that held an encrypted repository), or the far
/// side opens a store session on it and it holds a repository. A far side
/// that refuses a store session (a plain repository it indexes itself, or
/// an older snapfs), or holds no repository yet, takes the copy protocol.
fn far_side_is_a_store(to: &str) -> Result<bool> {
    if crate::repo::bucket::place(Path::new(to))?
        .root
        .join("config")
        .exists()
    {
        return Ok(true);
    }
    Ok(match crate::repo::config_at(Path::new(to)) {
        Ok(found) => found.is_some(),
        Err(e) => {
            log::debug!("{to}: {e}; copying with the copy protocol");
            false
        }
    })
}

fn copy_to(
    repo: &Path,
    to: &str,
    how: &CopyTo,
    snapshots: &[String],
    json: bool,
) -> Result<ExitCode> {
    use crate::repo::Encryption;
    let repo = open(repo)?;
    let _lease = repo.reader_lease("copy")?;
    let plain = repo.config.encryption == Encryption::None;
    let asked = how
        .encryption
        .as_deref()
        .map(encryption_named)
        .transpose()?;
    let stats = match copy::remote::parse_ssh_url(to) {
        // Plain to plain: stored blobs travel as they are, and the far
        // side indexes them (the copy protocol). Anything encrypted goes
        // through the far side as a keyless store, sealed here.
        Some(url)
            if plain
                && asked.is_none_or(|e| e == Encryption::None)
                && !far_side_is_a_store(to)? =>
        {
            let mut t = copy::remote::RemoteTarget::connect(&url, &how.ssh, &how.remote_snapfs)?;
            copy::copy(&repo, &mut t, snapshots)?
        }
        _ => {
            let path = Path::new(to);
            let existing = crate::repo::config_at(path)?;
            let encryption = match (&existing, &how.encryption) {
                (Some(_), Some(_)) => {
                    return Err(crate::error::Error::invalid(format!(
                        "{to} exists already: --to-encryption only chooses how a new destination is made"
                    )));
                }
                (Some(c), None) => c.encryption,
                (None, Some(_)) => asked.expect("given"),
                (None, None) => repo.config.encryption,
            };
            if plain && encryption == Encryption::None {
                // The same ids and blobs on both sides: stored blobs travel
                // as they are, and only what the destination lacks.
                let mut t = copy::LocalTarget::open_or_init(path, repo.config.clone())?;
                copy::copy(&repo, &mut t, snapshots)?
            } else {
                let dst = match existing {
                    Some(_) => open_from(path, &how.password)?,
                    None => Repository::init_from(
                        path,
                        crate::repo::Config {
                            append_only: false,
                            id: Some(crate::repo::RepoId::random()?),
                            encryption,
                            ..repo.config.clone()
                        },
                        None,
                        &how.password,
                    )?,
                };
                if dst.config.id.is_some() && dst.config.id == repo.config.id {
                    return Err(crate::error::Error::invalid(format!(
                        "{to} is the repository being copied"
                    )));
                }
                copy::reencode::copy_reencoded(&repo, &dst, snapshots)?
            }
        }
    };
    report::copy(&stats, to, json);
    Ok(ExitCode::SUCCESS)
}

fn encryption_named(name: &str) -> Result<crate::repo::Encryption> {
    crate::repo::Encryption::from_name(name).ok_or_else(|| {
        crate::error::Error::invalid(format!(
            "--encryption {name:?}: choose one of {}",
            crate::repo::Encryption::NAMES.join(", ")
        ))
    })
}

fn man(dir: &Path) -> Result<ExitCode> {
    let files = crate::app::cli::write_man_pages(dir).map_err(|e| crate::Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    println!("wrote {} man pages to {}", files.len(), dir.display());
    Ok(ExitCode::SUCCESS)
}

fn mount(repo_path: &Path, a: MountArgs) -> Result<ExitCode> {
    let repo = open(repo_path)?;
    let shown = a.mountpoint.display().to_string();
    crate::mount::mount(repo, &a.mountpoint, &a.request(), || {
        use std::io::Write;
        println!(
            "mounted {} at {shown}; unmount with fusermount3 -u {shown}",
            repo_path.display()
        );
        let _ = std::io::stdout().flush();
    })?;
    Ok(ExitCode::SUCCESS)
}
