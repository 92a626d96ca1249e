//! The `snapfs` command: parse, call one library function, report, exit.
//! Exit codes: 0 success, 1 failure, 3 snapshot made but some files unreadable.

use std::process::ExitCode;

use clap::Parser;
use snapfs::cli::{Cli, Command};
use snapfs::{repo::Repository, report};

fn main() -> ExitCode {
    // Everything snapfs creates for itself (repository, catalog, packs,
    // locks, leases, temporary files) is for its owner alone, whatever the
    // caller's umask; restore sets the modes of what it restores explicitly.
    snapfs::repo::private_umask();
    let cli = Cli::parse();
    snapfs::repo::set_lock_wait(std::time::Duration::from_secs(cli.lock_wait));
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
        snapfs::progress::disable();
    }
    // Commands that print results end quietly when the reader goes away
    // (`snapfs snapshots | head -1`), as Unix tools do. Those that talk over
    // pipes or serve a mount keep SIGPIPE ignored and see EPIPE as an error.
    if !matches!(
        cli.command,
        Command::Copy { .. } | Command::Serve { .. } | Command::Mount { .. }
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

fn find_io(e: &snapfs::Error) -> Option<&std::io::Error> {
    match e {
        snapfs::Error::Io { source, .. } => Some(source),
        _ => None,
    }
}

fn run(cli: Cli) -> snapfs::Result<ExitCode> {
    let repo_path = cli.repo.unwrap_or_else(snapfs::repo::default_path);
    match cli.command {
        Command::Init {
            compression,
            append_only,
            group,
        } => {
            let config = snapfs::repo::Config {
                compression,
                append_only,
                ..Default::default()
            };
            let group = group.as_deref().map(snapfs::repo::group_id).transpose()?;
            Repository::init_shared(&repo_path, config, group)?;
            println!("created repository {}", repo_path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest(a) => {
            let repo = Repository::open(&repo_path)?;
            let opts = snapfs::ingest::IngestOptions {
                name: a.name,
                tags: a.tags,
                excludes: a.excludes,
                exclude_files: a.exclude_files,
                exclude_caches: a.exclude_caches,
                one_file_system: a.one_file_system,
                compression: a.compression,
                stdin_name: a.stdin.then_some(a.stdin_name),
            };
            let stats = snapfs::ingest::ingest(&repo, &a.sources, &opts)?;
            report::ingest(&stats, a.json);
            Ok(if stats.unreadable > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Snapshots { json } => {
            let repo = Repository::open(&repo_path)?;
            let cat = repo.catalog()?;
            report::snapshots(&cat.snapshots()?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Forget(a) => {
            let repo = Repository::open(&repo_path)?;
            let policy = snapfs::forget::Policy {
                last: a.keep_last,
                hourly: a.keep_hourly,
                daily: a.keep_daily,
                weekly: a.keep_weekly,
                monthly: a.keep_monthly,
                yearly: a.keep_yearly,
                within_ns: a
                    .keep_within
                    .as_deref()
                    .map(snapfs::forget::parse_duration)
                    .transpose()?,
                tags: a.keep_tags,
            };
            let opts = snapfs::forget::ForgetOptions {
                policy,
                snapshots: a.snapshots,
                dry_run: a.dry_run,
                allow_delete: a.allow_delete,
            };
            let decisions = snapfs::forget::forget(&repo, &opts)?;
            let gc = if a.gc && !a.dry_run {
                Some(snapfs::gc::gc(
                    &repo,
                    &snapfs::gc::GcOptions {
                        allow_delete: a.allow_delete,
                        ..Default::default()
                    },
                )?)
            } else {
                None
            };
            report::forget(&decisions, a.dry_run, gc.as_ref(), a.json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc {
            dry_run,
            max_unused,
            allow_delete,
            json,
        } => {
            let repo = Repository::open(&repo_path)?;
            let opts = snapfs::gc::GcOptions {
                dry_run,
                max_unused: max_unused / 100.0,
                allow_delete,
            };
            report::gc(&snapfs::gc::gc(&repo, &opts)?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            read_data,
            read_data_subset,
            json,
        } => {
            let repo = Repository::open(&repo_path)?;
            let _lease = repo.reader_lease("verify")?;
            let share = if read_data {
                1.0
            } else {
                read_data_subset.unwrap_or(0.0) / 100.0
            };
            let r =
                snapfs::verify::verify(&repo, &snapfs::verify::VerifyOptions { read_data: share })?;
            report::verify(&r, json);
            Ok(if r.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::RebuildCatalog { force, json } => {
            let repo = Repository::open(&repo_path)?;
            let opts = snapfs::rebuild::RebuildOptions { force };
            let r = snapfs::rebuild::rebuild_catalog(&repo, &opts)?;
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
        Command::Diff {
            from,
            to,
            path,
            json,
        } => {
            let repo = Repository::open(&repo_path)?;
            let _lease = repo.reader_lease("diff")?;
            report::diff(
                &snapfs::diff::diff(&repo, &from, &to, path.as_deref())?,
                json,
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { snapshot, json } => {
            let repo = Repository::open(&repo_path)?;
            let _lease = repo.reader_lease("stats")?;
            report::stats(&snapfs::stats::stats(&repo, snapshot.as_deref())?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Log { path, json } => {
            let repo = Repository::open(&repo_path)?;
            report::log(&snapfs::history::log(&repo, &path)?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Find {
            glob,
            snapshot,
            json,
        } => {
            let repo = Repository::open(&repo_path)?;
            report::find(
                &snapfs::find::find(&repo, &glob, snapshot.as_deref())?,
                json,
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Copy {
            to,
            ssh,
            remote_snapfs,
            json,
            snapshots,
        } => {
            let repo = Repository::open(&repo_path)?;
            let _lease = repo.reader_lease("copy")?;
            let stats = match snapfs::remote::parse_ssh_url(&to) {
                Some(url) => {
                    let mut t = snapfs::remote::RemoteTarget::connect(&url, &ssh, &remote_snapfs)?;
                    snapfs::copy::copy(&repo, &mut t, &snapshots)?
                }
                None => {
                    let mut t = snapfs::copy::LocalTarget::open_or_init(
                        std::path::Path::new(&to),
                        repo.config.clone(),
                    )?;
                    snapfs::copy::copy(&repo, &mut t, &snapshots)?
                }
            };
            report::copy(&stats, &to, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { append_only } => {
            snapfs::remote::serve(&repo_path, snapfs::remote::ServeOptions { append_only })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            snapfs::cli::print_completions(shell);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            let files = snapfs::cli::write_man_pages(&dir).map_err(|e| snapfs::Error::Io {
                path: dir.clone(),
                source: e,
            })?;
            println!("wrote {} man pages to {}", files.len(), dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Mount {
            mountpoint,
            allow_other,
            cache_size,
            threads,
            names,
            idle_expiry,
        } => {
            let repo = Repository::open(&repo_path)?;
            let req = snapfs::mount::MountRequest {
                names: match names {
                    snapfs::cli::NameStyle::Plain => snapfs::snapshot_fs::Names::Plain,
                    snapfs::cli::NameStyle::Gmt => snapfs::snapshot_fs::Names::Gmt,
                },
                allow_other,
                cache_bytes: cache_size as usize,
                threads,
                idle_expiry: std::time::Duration::from_secs(idle_expiry),
            };
            let shown = mountpoint.display().to_string();
            snapfs::mount::mount(repo, &mountpoint, &req, || {
                use std::io::Write;
                println!(
                    "mounted {} at {shown}; unmount with fusermount3 -u {shown}",
                    repo_path.display()
                );
                let _ = std::io::stdout().flush();
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { spec, target, json } => {
            let repo = Repository::open(&repo_path)?;
            let _lease = repo.reader_lease("restore")?;
            let stats = snapfs::restore::restore(&repo, &spec, &target)?;
            report::restore(&stats, json);
            Ok(ExitCode::SUCCESS)
        }
    }
}
