//! The `snapfs` command: parse, call one library function, report, exit.
//! Exit codes: 0 success, 1 failure, 3 snapshot made but some files unreadable.

use std::process::ExitCode;

use crate::app::cli::{Cli, Command};
use crate::app::report;
use crate::repo::Repository;
use clap::Parser;

pub fn main() -> ExitCode {
    // Everything snapfs creates for itself (repository, catalog, packs,
    // locks, leases, temporary files) is for its owner alone, whatever the
    // caller's umask; restore sets the modes of what it restores explicitly.
    crate::repo::private_umask();
    let cli = Cli::parse();
    crate::repo::set_lock_wait(std::time::Duration::from_secs(cli.lock_wait));
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

fn find_io(e: &crate::Error) -> Option<&std::io::Error> {
    match e {
        crate::Error::Io { source, .. } => Some(source),
        _ => None,
    }
}

fn run(cli: Cli) -> crate::Result<ExitCode> {
    let repo_path = cli.repo.unwrap_or_else(crate::repo::default_path);
    match cli.command {
        Command::Init {
            compression,
            append_only,
            group,
        } => {
            let config = crate::repo::Config {
                compression,
                append_only,
                ..Default::default()
            };
            let group = group.as_deref().map(crate::repo::group_id).transpose()?;
            Repository::init_shared(&repo_path, config, group)?;
            println!("created repository {}", repo_path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ingest(a) => {
            let repo = Repository::open(&repo_path)?;
            let opts = crate::commands::ingest::IngestOptions {
                name: a.name,
                tags: a.tags,
                excludes: a.excludes,
                exclude_files: a.exclude_files,
                exclude_caches: a.exclude_caches,
                one_file_system: a.one_file_system,
                compression: a.compression,
                stdin_name: a.stdin.then_some(a.stdin_name),
            };
            let stats = crate::commands::ingest::ingest(&repo, &a.sources, &opts)?;
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
            let policy = crate::commands::forget::Policy {
                last: a.keep_last,
                hourly: a.keep_hourly,
                daily: a.keep_daily,
                weekly: a.keep_weekly,
                monthly: a.keep_monthly,
                yearly: a.keep_yearly,
                within_ns: a
                    .keep_within
                    .as_deref()
                    .map(crate::commands::forget::parse_duration)
                    .transpose()?,
                tags: a.keep_tags,
            };
            let opts = crate::commands::forget::ForgetOptions {
                policy,
                snapshots: a.snapshots,
                dry_run: a.dry_run,
                allow_delete: a.allow_delete,
            };
            let decisions = crate::commands::forget::forget(&repo, &opts)?;
            let gc = if a.gc && !a.dry_run {
                Some(crate::commands::gc::gc(
                    &repo,
                    &crate::commands::gc::GcOptions {
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
            let opts = crate::commands::gc::GcOptions {
                dry_run,
                max_unused: max_unused / 100.0,
                allow_delete,
            };
            report::gc(&crate::commands::gc::gc(&repo, &opts)?, json);
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
            let r = crate::commands::verify::verify(
                &repo,
                &crate::commands::verify::VerifyOptions { read_data: share },
            )?;
            report::verify(&r, json);
            Ok(if r.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::RebuildCatalog { force, json } => {
            let repo = Repository::open(&repo_path)?;
            let opts = crate::commands::rebuild::RebuildOptions { force };
            let r = crate::commands::rebuild::rebuild_catalog(&repo, &opts)?;
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
                &crate::commands::diff::diff(&repo, &from, &to, path.as_deref())?,
                json,
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { snapshot, json } => {
            let repo = Repository::open(&repo_path)?;
            let _lease = repo.reader_lease("stats")?;
            report::stats(
                &crate::commands::stats::stats(&repo, snapshot.as_deref())?,
                json,
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Log { path, json } => {
            let repo = Repository::open(&repo_path)?;
            report::log(&crate::commands::log::log(&repo, &path)?, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Find {
            glob,
            snapshot,
            json,
        } => {
            let repo = Repository::open(&repo_path)?;
            report::find(
                &crate::commands::find::find(&repo, &glob, snapshot.as_deref())?,
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
            let stats = match crate::commands::copy::remote::parse_ssh_url(&to) {
                Some(url) => {
                    let mut t = crate::commands::copy::remote::RemoteTarget::connect(
                        &url,
                        &ssh,
                        &remote_snapfs,
                    )?;
                    crate::commands::copy::copy(&repo, &mut t, &snapshots)?
                }
                None => {
                    let mut t = crate::commands::copy::LocalTarget::open_or_init(
                        std::path::Path::new(&to),
                        repo.config.clone(),
                    )?;
                    crate::commands::copy::copy(&repo, &mut t, &snapshots)?
                }
            };
            report::copy(&stats, &to, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { append_only } => {
            crate::commands::copy::remote::serve(
                &repo_path,
                crate::commands::copy::remote::ServeOptions { append_only },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            crate::app::cli::print_completions(shell);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            let files = crate::app::cli::write_man_pages(&dir).map_err(|e| crate::Error::Io {
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
            let req = crate::mount::MountRequest {
                names: match names {
                    crate::app::cli::NameStyle::Plain => crate::mount::snapshot_fs::Names::Plain,
                    crate::app::cli::NameStyle::Gmt => crate::mount::snapshot_fs::Names::Gmt,
                },
                allow_other,
                cache_bytes: cache_size as usize,
                threads,
                idle_expiry: std::time::Duration::from_secs(idle_expiry),
            };
            let shown = mountpoint.display().to_string();
            crate::mount::mount(repo, &mountpoint, &req, || {
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
            let stats = crate::commands::restore::restore(&repo, &spec, &target)?;
            report::restore(&stats, json);
            Ok(ExitCode::SUCCESS)
        }
    }
}
