//! The chunk → store pipeline: compression on every core, one pack writer.
//!
//! ```text
//! walker ──jobs──► compressors (N threads) ──blobs──► pack writer ──► backend
//!    ▲                                                      │
//!    └───────────── sealed packs (at a flush) ◄─────────────┘
//! ```
//! Queues are bounded, so memory does not grow with the data. The walker owns
//! the catalog: it records sealed packs only at a flush, after they are
//! durable, and then commits; so no catalog row ever points at missing data.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::error::{Error, Result};
use crate::format::blob::{Encoder, Hashed};
use crate::format::pack::{ChunkKind, PackWriter, SealedPack};
use crate::ids::ChunkId;
use crate::repo::backend::Backend;

struct Job {
    id: ChunkId,
    kind: ChunkKind,
    data: Vec<u8>,
    hashed: Hashed,
}

enum ToWriter {
    Blob {
        id: ChunkId,
        kind: ChunkKind,
        raw_len: u32,
        blob: Vec<u8>,
    },
    Seal(Sender<Vec<SealedPack>>),
}

/// Work handed over and not yet done (chunks not yet appended to a pack,
/// packs not yet stored); a flush waits for zero.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    zero: Condvar,
}

impl InFlight {
    fn add(&self) {
        *self.count.lock().expect("in-flight lock") += 1;
    }
    fn done(&self) {
        let mut c = self.count.lock().expect("in-flight lock");
        *c -= 1;
        if *c == 0 {
            self.zero.notify_all();
        }
    }
    fn wait_zero(&self) {
        let mut c = self.count.lock().expect("in-flight lock");
        while *c > 0 {
            c = self.zero.wait(c).expect("in-flight lock");
        }
    }
}

pub struct Pipeline {
    jobs: Option<Sender<Job>>,
    to_writer: Option<Sender<ToWriter>>,
    in_flight: Arc<InFlight>,
    error: Arc<Mutex<Option<Error>>>,
    threads: Vec<JoinHandle<()>>,
}

pub struct PipelineOptions {
    pub level: i32,
    pub workers: usize,
    pub pack_size: u64,
    pub tmp_dir: PathBuf,
    /// Seals blobs and pack tables in an encrypted repository.
    pub keying: Arc<crate::format::keying::Keying>,
}

impl Pipeline {
    pub fn start(backend: Arc<dyn Backend>, opts: PipelineOptions) -> Result<Pipeline> {
        // Fail on a bad level now, not in a worker.
        Encoder::new(opts.level, &opts.keying)?;
        let workers = opts.workers.max(1);
        let (jobs_tx, jobs_rx) = bounded::<Job>(workers * 2);
        let (blob_tx, blob_rx) = bounded::<ToWriter>(workers * 2);
        let in_flight = Arc::new(InFlight::default());
        let error = Arc::new(Mutex::new(None));
        let mut threads = Vec::new();
        for i in 0..workers {
            let rx = jobs_rx.clone();
            let tx = blob_tx.clone();
            let err = error.clone();
            let fl = in_flight.clone();
            let level = opts.level;
            let keying = opts.keying.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("compress-{i}"))
                    .spawn(move || compress_loop(level, &keying, rx, tx, err, fl))
                    .expect("spawn compressor thread"),
            );
        }
        let err = error.clone();
        let fl = in_flight.clone();
        threads.push(
            std::thread::Builder::new()
                .name("pack-writer".into())
                .spawn(move || writer_loop(backend, &opts, blob_rx, err, fl))
                .expect("spawn pack writer thread"),
        );
        Ok(Pipeline {
            jobs: Some(jobs_tx),
            to_writer: Some(blob_tx),
            in_flight,
            error,
            threads,
        })
    }

    fn check(&self) -> Result<()> {
        match self.error.lock().expect("error lock").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Hand a new chunk over for compression and storage.
    pub fn store(&self, kind: ChunkKind, data: Vec<u8>, hashed: Hashed) -> Result<()> {
        self.check()?;
        self.in_flight.add();
        let job = Job {
            id: hashed.id,
            kind,
            data,
            hashed,
        };
        if self
            .jobs
            .as_ref()
            .expect("pipeline is running")
            .send(job)
            .is_err()
        {
            return Err(Error::invalid("storage pipeline stopped"));
        }
        Ok(())
    }

    /// Wait until everything handed over is in sealed, durable packs, and
    /// return the packs sealed since the last flush.
    pub fn flush(&self) -> Result<Vec<SealedPack>> {
        self.in_flight.wait_zero();
        self.check()?;
        let (tx, rx) = bounded(1);
        self.to_writer
            .as_ref()
            .expect("pipeline is running")
            .send(ToWriter::Seal(tx))
            .map_err(|_| Error::invalid("storage pipeline stopped"))?;
        let sealed = rx
            .recv()
            .map_err(|_| Error::invalid("storage pipeline stopped"))?;
        self.check()?;
        Ok(sealed)
    }

    /// Stop the threads (after a flush, or to abandon the work on error).
    pub fn finish(mut self) {
        self.jobs.take();
        self.to_writer.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn record(err: &Mutex<Option<Error>>, e: Error) {
    let mut slot = err.lock().expect("error lock");
    if slot.is_none() {
        *slot = Some(e);
    }
}

fn compress_loop(
    level: i32,
    keying: &Arc<crate::format::keying::Keying>,
    rx: Receiver<Job>,
    tx: Sender<ToWriter>,
    err: Arc<Mutex<Option<Error>>>,
    in_flight: Arc<InFlight>,
) {
    let mut enc = match Encoder::new(level, keying) {
        Ok(e) => e,
        Err(e) => {
            record(&err, e);
            for _ in rx {
                in_flight.done();
            }
            return;
        }
    };
    for job in rx {
        match enc.encode(&job.data, &job.hashed) {
            Ok(blob) => {
                let msg = ToWriter::Blob {
                    id: job.id,
                    kind: job.kind,
                    raw_len: job.data.len() as u32,
                    blob,
                };
                if tx.send(msg).is_err() {
                    in_flight.done();
                }
            }
            Err(e) => {
                record(&err, e);
                in_flight.done();
            }
        }
    }
}

fn writer_loop(
    backend: Arc<dyn Backend>,
    opts: &PipelineOptions,
    rx: Receiver<ToWriter>,
    err: Arc<Mutex<Option<Error>>>,
    in_flight: Arc<InFlight>,
) {
    let level = crate::format::pack::recorded_level(opts.level);
    let (tmp_dir, pack_size) = (&opts.tmp_dir, opts.pack_size);
    // Packs are made durable and stored on threads of their own, so writing
    // the next pack goes on during an fsync or an upload: one for a local
    // directory (a rename), several for object storage (a PUT waits on the
    // network). A flush waits until none is left in flight. Each thread
    // holds at most one pack, so memory stays bounded.
    let uploaders = backend.parallel_puts().max(1);
    let (sync_tx, sync_rx) = bounded::<crate::format::pack::Unsynced>(uploaders);
    let sealed: Arc<Mutex<Vec<SealedPack>>> = Arc::default();
    let packs_in_flight = Arc::new(InFlight::default());
    let failed_put = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let syncers: Vec<JoinHandle<()>> = (0..uploaders)
        .map(|i| {
            let sealed = sealed.clone();
            let err = err.clone();
            let rx = sync_rx.clone();
            let backend = backend.clone();
            let packs = packs_in_flight.clone();
            let failed = failed_put.clone();
            std::thread::Builder::new()
                .name(format!("pack-sync-{i}"))
                .spawn(move || {
                    for u in rx {
                        if failed.load(std::sync::atomic::Ordering::Relaxed) {
                            u.abandon();
                        } else {
                            let res = u.sync().and_then(|s| {
                                backend.put(&s.name, &s.path)?;
                                Ok(s)
                            });
                            match res {
                                Ok(s) => sealed.lock().expect("sealed list lock").push(s),
                                Err(e) => {
                                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                    record(&err, e);
                                }
                            }
                        }
                        packs.done();
                    }
                })
                .expect("spawn pack sync thread")
        })
        .collect();
    drop(sync_rx);
    let mut current: Option<PackWriter> = None;
    let mut failed = false;
    let hand_over = |w: PackWriter| -> Result<()> {
        let u = w.seal_unsynced()?;
        packs_in_flight.add();
        sync_tx.send(u).map_err(|_| {
            packs_in_flight.done();
            Error::invalid("pack sync thread stopped")
        })
    };
    for msg in rx {
        match msg {
            ToWriter::Blob {
                id,
                kind,
                raw_len,
                blob,
            } => {
                if !failed {
                    let res = (|| -> Result<()> {
                        if current.is_none() {
                            current = Some(PackWriter::create(tmp_dir, level, &opts.keying)?);
                        }
                        let w = current.as_mut().expect("writer just created");
                        w.append(id, kind, raw_len, &blob)?;
                        if w.len() >= pack_size {
                            hand_over(current.take().expect("writer present"))?;
                        }
                        Ok(())
                    })();
                    if let Err(e) = res {
                        failed = true;
                        if let Some(w) = current.take() {
                            w.abandon();
                        }
                        record(&err, e);
                    }
                }
                in_flight.done();
            }
            ToWriter::Seal(reply) => {
                if !failed
                    && let Some(w) = current.take()
                    && !w.is_empty()
                    && let Err(e) = hand_over(w)
                {
                    failed = true;
                    record(&err, e);
                }
                packs_in_flight.wait_zero();
                let _ = reply.send(std::mem::take(
                    &mut *sealed.lock().expect("sealed list lock"),
                ));
            }
        }
    }
    if let Some(w) = current.take() {
        w.abandon();
    }
    drop(sync_tx);
    for t in syncers {
        let _ = t.join();
    }
}
