//! The ceiling of this kernel's FUSE for the mount benchmarks: a filesystem
//! serving one file of SIZE bytes straight from memory, on the same fuser
//! settings as `snapfs mount` (worker threads, read-ahead, keep_cache).
//!
//!     cargo run --release --example bare_fuse -- MOUNTPOINT [SIZE_MIB]
//!
//! Prints "mounted" when ready; unmount with `fusermount3 -u MOUNTPOINT`.

use std::ffi::OsStr;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEntry, ReplyOpen, Request, Session,
};

struct Bare {
    data: Vec<u8>,
}

const TTL: Duration = Duration::from_secs(3600);

fn attr(ino: u64, size: u64, dir: bool) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if dir { 0o555 } else { 0o444 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl Filesystem for Bare {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == "data" {
            reply.entry(&TTL, &attr(2, self.data.len() as u64, false), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            1 => reply.attr(&TTL, &attr(1, 0, true)),
            2 => reply.attr(&TTL, &attr(2, self.data.len() as u64, false)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let start = (offset as usize).min(self.data.len());
        let end = (start + size as usize).min(self.data.len());
        reply.data(&self.data[start..end]);
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (2, FileType::RegularFile, "data"),
        ];
        for (i, (ino, kind, name)) in items.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(mountpoint) = args.get(1) else {
        eprintln!("usage: bare_fuse MOUNTPOINT [SIZE_MIB]");
        std::process::exit(1);
    };
    let mib: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let data: Vec<u8> = (0..mib << 20).map(|i| (i % 251) as u8).collect();
    let mut config = Config::default();
    config.mount_options = vec![MountOption::RO, MountOption::FSName("bare".into())];
    config.n_threads = Some(4);
    config.clone_fd = true;
    let session = Session::new(Bare { data }, mountpoint, &config).expect("mount");
    let mp = mountpoint.clone();
    std::thread::spawn(move || {
        // Same read-ahead as snapfs mount asks for (root only).
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(md) = std::fs::metadata(&mp) {
            use std::os::unix::fs::MetadataExt;
            let dev = md.dev();
            let _ = std::fs::write(
                format!(
                    "/sys/class/bdi/{}:{}/read_ahead_kb",
                    libc::major(dev),
                    libc::minor(dev)
                ),
                "1024",
            );
        }
        println!("mounted");
        let _ = std::io::stdout().flush();
    });
    session.run().expect("serve");
}
