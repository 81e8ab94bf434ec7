//! The cxx bridge between libtorrent (C++, `cpp/`) and bae (Rust).
//!
//! Only integers, byte slices, strings and plain structs cross it. libtorrent's handlers
//! stay inside opaque C++ [`ffi::DiskJob`] objects that Rust holds as `UniquePtr` and
//! hands back through [`ffi::complete_job`]; a job dropped without completion completes
//! itself with `operation_aborted`, so every libtorrent handler runs exactly once.
//! Nothing here panics or throws across the boundary: C++ functions that can throw
//! return `Result`, and the Rust functions called from C++ never panic.

#[cxx::bridge(namespace = "bae::ffi")]
pub(crate) mod ffi {
    /// One file of a torrent's layout (see `storage::LayoutFile`).
    struct FileEntry {
        path: Vec<String>,
        len: u64,
        pad: bool,
        mtime: i64,
    }

    /// The byte layout of a torrent, built from libtorrent's `file_storage`.
    struct Layout {
        piece_len: u64,
        total_len: u64,
        files: Vec<FileEntry>,
    }

    /// A parsed .torrent file. Hashes are empty when the torrent has no such version.
    struct MetainfoFfi {
        name: String,
        info_hash_v1: Vec<u8>,
        info_hash_v2: Vec<u8>,
        layout: Layout,
    }

    /// A parsed magnet link. Hashes are empty when the link has no such version.
    struct MagnetFfi {
        name: String,
        info_hash_v1: Vec<u8>,
        info_hash_v2: Vec<u8>,
        trackers: Vec<String>,
        peers: Vec<String>,
    }

    /// How a disk job ended. `os_error` (an errno) 0 is success; `data` carries read bytes or digests
    /// (hash: 20 bytes of SHA-1, then 32 bytes per v2 block; hash2: 32 bytes).
    struct JobResult {
        os_error: i32,
        op: DiskOp,
        data: Vec<u8>,
        check: CheckStatus,
    }

    /// The operation a disk error is reported against.
    enum DiskOp {
        Read,
        Write,
        Check,
    }

    /// The answer to `async_check_files`.
    enum CheckStatus {
        Ok,
        NeedFullCheck,
        Fatal,
    }

    struct SessionOptions {
        listen_interfaces: String,
        enable_dht: bool,
        enable_lsd: bool,
        enable_upnp: bool,
        enable_natpmp: bool,
        enable_utp: bool,
        allow_multiple_connections_per_ip: bool,
        /// libtorrent's queue: torrents downloading / seeding at once, and in all.
        active_downloads: i32,
        active_seeds: i32,
        active_limit: i32,
        /// Each peer socket's receive buffer (SO_RCVBUF); 0: the OS tunes it.
        recv_buffer_bytes: i32,
    }

    /// A torrent to add: `torrent_bytes` (a .torrent) or else `magnet`.
    struct AddRequest {
        id: i64,
        save_path: String,
        torrent_bytes: Vec<u8>,
        magnet: String,
        /// One byte per piece, non-zero = verified. Empty for magnets.
        have_pieces: Vec<u8>,
        /// libtorrent resume data saved by an earlier run, or empty. Only its block
        /// bitmaps of pieces not in `have_pieces` are used (see `keep_partial_blocks`).
        resume: Vec<u8>,
        paused: bool,
        peers: Vec<String>,
    }

    struct StatusFfi {
        state: TorrentStateFfi,
        paused: bool,
        progress: f32,
        download_rate: i64,
        upload_rate: i64,
        peers: u32,
        seeds: u32,
        pieces_have: u32,
        pieces_total: u32,
        total_done: i64,
        total_wanted: i64,
        error: String,
    }

    enum TorrentStateFfi {
        CheckingFiles,
        DownloadingMetadata,
        Downloading,
        Finished,
        Seeding,
        CheckingResume,
    }

    enum AlertKind {
        MetadataReceived,
        PieceFinished,
        HashFailed,
        TorrentFinished,
        TorrentChecked,
        TorrentError,
        SessionError,
        /// `bytes`: the torrent's resume data (bencoded), as asked by `save_resume_data`.
        ResumeData,
        /// Resume data could not be made (torrent being removed…); `message` says why.
        ResumeDataFailed,
        /// The alert queue overflowed: piece alerts may be lost (`id` -1).
        AlertsDropped,
    }

    /// One libtorrent alert, reduced to what bae uses. `id` is -1 for session alerts
    /// and for torrents no longer known.
    struct AlertFfi {
        kind: AlertKind,
        id: i64,
        piece: u32,
        message: String,
        bytes: Vec<u8>,
    }

    extern "Rust" {
        /// Rust's side of the disk subsystem: storages, job queues, workers.
        type DiskHandle;
        fn open_storage(self: &DiskHandle, index: u32, save_path: &str, layout: Layout);
        fn close_storage(self: &DiskHandle, index: u32);
        fn submit_read(
            self: &DiskHandle,
            index: u32,
            piece: u32,
            offset: u32,
            len: u32,
            job: UniquePtr<DiskJob>,
        );
        fn submit_write(
            self: &DiskHandle,
            index: u32,
            piece: u32,
            offset: u32,
            data: &[u8],
            job: UniquePtr<DiskJob>,
        ) -> bool;
        /// Completes `job` once downloads may go on (backpressure released).
        fn wait_for_room(self: &DiskHandle, job: UniquePtr<DiskJob>);
        fn submit_hash(
            self: &DiskHandle,
            index: u32,
            piece: u32,
            v1: bool,
            v2_blocks: u32,
            job: UniquePtr<DiskJob>,
        );
        fn submit_hash2(
            self: &DiskHandle,
            index: u32,
            piece: u32,
            offset: u32,
            job: UniquePtr<DiskJob>,
        );
        fn submit_check(self: &DiskHandle, index: u32, job: UniquePtr<DiskJob>);
        fn submit_clear_piece(self: &DiskHandle, index: u32, piece: u32, job: UniquePtr<DiskJob>);
        fn submit_flush(self: &DiskHandle, index: u32, job: UniquePtr<DiskJob>);
        fn abort(self: &DiskHandle);
        fn shutdown(self: &DiskHandle);
    }

    unsafe extern "C++" {
        include!("bae/cpp/bae_disk.hpp");
        include!("bae/cpp/bae_session.hpp");

        /// A libtorrent completion handler plus the work guard keeping its io_context alive.
        type DiskJob;
        /// Posts the job's handler, with `result`, to libtorrent's network thread.
        fn complete_job(job: UniquePtr<DiskJob>, result: JobResult);

        /// A libtorrent session using bae's disk subsystem.
        type Session;
        fn new_session(opts: &SessionOptions, disk: Box<DiskHandle>) -> Result<UniquePtr<Session>>;
        fn listen_port(self: &Session) -> u16;
        fn add_torrent(self: &Session, req: &AddRequest) -> Result<()>;
        fn remove_torrent(self: &Session, id: i64) -> Result<()>;
        fn pause_torrent(self: &Session, id: i64) -> Result<()>;
        fn resume_torrent(self: &Session, id: i64) -> Result<()>;
        fn set_piece_deadline(self: &Session, id: i64, piece: u32, deadline_ms: i32) -> Result<()>;
        fn set_piece_priority(self: &Session, id: i64, piece: u32, priority: u8) -> Result<()>;
        fn connect_peer(self: &Session, id: i64, addr: &str) -> Result<()>;
        fn torrent_status(self: &Session, id: i64) -> Result<StatusFfi>;
        fn have_pieces(self: &Session, id: i64) -> Result<Vec<u32>>;
        /// Asks for the torrent's resume data; it arrives as a `ResumeData` alert.
        fn save_resume_data(self: &Session, id: i64) -> Result<()>;
        fn wait_alerts(self: &Session, timeout_ms: u32) -> Vec<AlertFfi>;

        fn parse_torrent(bytes: &[u8]) -> Result<MetainfoFfi>;
        fn parse_magnet_uri(uri: &str) -> Result<MagnetFfi>;
        /// `progress(pieces hashed, pieces)` is called as pieces are hashed.
        fn make_torrent(
            dir: &str,
            piece_len: u64,
            trackers: &Vec<String>,
            progress: fn(u32, u32),
        ) -> Result<Vec<u8>>;
    }
}

// SAFETY: a DiskJob only holds a std::function, an io_context reference and a work
// guard; completing it posts to the io_context, which is thread-safe.
unsafe impl Send for ffi::DiskJob {}
// SAFETY: every Session method takes an internal mutex for its id map and otherwise calls
// lt::session / lt::torrent_handle, which are thread-safe (they post to the network thread).
unsafe impl Send for ffi::Session {}
// SAFETY: see Send above.
unsafe impl Sync for ffi::Session {}

pub(crate) use crate::torrent::disk::DiskHandle;
