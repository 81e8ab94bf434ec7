// bae's libtorrent disk subsystem: a thin disk_interface that forwards every job to Rust.
//
// Shape: storages are indexed by storage_index_t; each async_* call wraps its handler in
// a DiskJob and hands it to Rust (DiskHandle), whose workers do the I/O and hashing and
// call complete_job(), which hands the handler to Completions: one post to libtorrent's
// io_context carries every job finished before it runs (not a post, and a wake-up of
// the network thread, per 16 KiB block).
// Invariants:
//  - nothing blocks the network thread: the async_* calls only copy and enqueue;
//  - every DiskJob holds a work guard, so the io_context keeps running until its
//    handler has run, also during session teardown;
//  - a DiskJob destroyed without completion posts its handler with operation_aborted,
//    so every handler runs exactly once, on the network thread;
//  - the destructor stops and joins the Rust workers (2.0.8 never calls abort(true));
//  - backpressure: async_write reports "exceeded" when libtorrent's write queue is over
//    max_queued_disk_bytes or when Rust says the cache (or its disk) has no room; the
//    observers are woken (on the network thread) when the queue drains or when Rust
//    completes the one outstanding room-wait job.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <libtorrent/disk_interface.hpp>
#include <libtorrent/io_context.hpp>
#include <libtorrent/settings_pack.hpp>

#include "rust/cxx.h"

namespace lt = libtorrent;

namespace bae::ffi {

struct JobResult;
struct DiskHandle;

using WorkGuard = boost::asio::executor_work_guard<lt::io_context::executor_type>;

// Handlers of finished jobs waiting for the network thread, run there in the order
// they finished. Any thread adds; a post is made only when none is pending.
class Completions : public std::enable_shared_from_this<Completions> {
public:
    using Finish = std::function<void(JobResult const&)>;
    // Out of line: `Done` holds a JobResult, complete only in the .cpp.
    explicit Completions(lt::io_context& ioc);
    ~Completions();
    lt::io_context& ioc() { return ioc_; }
    void add(Finish finish, JobResult result, WorkGuard guard);

private:
    struct Done;
    void run();

    lt::io_context& ioc_;
    std::mutex mutex_;
    std::vector<Done> ready_;
    bool posted_ = false;
};

class DiskJob {
public:
    using Finish = Completions::Finish;
    DiskJob(std::shared_ptr<Completions> completions, Finish finish);
    ~DiskJob();
    DiskJob(DiskJob const&) = delete;
    DiskJob& operator=(DiskJob const&) = delete;

    // Hands finish(result) to the network thread. At most once.
    void complete(JobResult result);

private:
    std::shared_ptr<Completions> completions_;
    Finish finish_;
    WorkGuard guard_;
    bool completed_ = false;
};

void complete_job(std::unique_ptr<DiskJob> job, JobResult result);

class BaeDisk final : public lt::disk_interface {
public:
    BaeDisk(lt::io_context& ioc, lt::settings_interface const& settings, DiskHandle const& rust);
    ~BaeDisk() override;

    lt::storage_holder new_torrent(lt::storage_params const& p,
                                   std::shared_ptr<void> const& torrent) override;
    void remove_torrent(lt::storage_index_t) override;

    void async_read(lt::storage_index_t, lt::peer_request const&,
                    std::function<void(lt::disk_buffer_holder, lt::storage_error const&)>,
                    lt::disk_job_flags_t) override;
    bool async_write(lt::storage_index_t, lt::peer_request const&, char const* buf,
                     std::shared_ptr<lt::disk_observer>,
                     std::function<void(lt::storage_error const&)>, lt::disk_job_flags_t) override;
    void async_hash(lt::storage_index_t, lt::piece_index_t, lt::span<lt::sha256_hash>,
                    lt::disk_job_flags_t,
                    std::function<void(lt::piece_index_t, lt::sha1_hash const&,
                                       lt::storage_error const&)>) override;
    void async_hash2(lt::storage_index_t, lt::piece_index_t, int offset, lt::disk_job_flags_t,
                     std::function<void(lt::piece_index_t, lt::sha256_hash const&,
                                        lt::storage_error const&)>) override;
    void async_move_storage(lt::storage_index_t, std::string, lt::move_flags_t,
                            std::function<void(lt::status_t, std::string const&,
                                               lt::storage_error const&)>) override;
    void async_release_files(lt::storage_index_t, std::function<void()>) override;
    void async_check_files(lt::storage_index_t, lt::add_torrent_params const*,
                           lt::aux::vector<std::string, lt::file_index_t>,
                           std::function<void(lt::status_t, lt::storage_error const&)>) override;
    void async_stop_torrent(lt::storage_index_t, std::function<void()>) override;
    void async_rename_file(lt::storage_index_t, lt::file_index_t, std::string,
                           std::function<void(std::string const&, lt::file_index_t,
                                              lt::storage_error const&)>) override;
    void async_delete_files(lt::storage_index_t, lt::remove_flags_t,
                            std::function<void(lt::storage_error const&)>) override;
    void async_set_file_priority(
        lt::storage_index_t, lt::aux::vector<lt::download_priority_t, lt::file_index_t>,
        std::function<void(lt::storage_error const&,
                           lt::aux::vector<lt::download_priority_t, lt::file_index_t>)>) override;
    void async_clear_piece(lt::storage_index_t, lt::piece_index_t,
                           std::function<void(lt::piece_index_t)>) override;

    void update_stats_counters(lt::counters&) const override {}
    std::vector<lt::open_file_state> get_status(lt::storage_index_t) const override { return {}; }
    void abort(bool) override;
    void submit_jobs() override {}
    void settings_updated() override;

private:
    std::unique_ptr<DiskJob> job(DiskJob::Finish finish);
    void write_done(int len);
    void wake_waiting();

    lt::io_context& ioc_;
    std::shared_ptr<Completions> completions_;
    lt::settings_interface const& settings_;
    DiskHandle const& rust_;
    // Storage slots in use; freed indices are reused. Network thread only.
    std::vector<bool> used_;
    // Write-queue accounting, network thread only: bytes handed to Rust and not yet
    // completed, and the peers waiting for the queue to drain.
    std::int64_t queued_write_bytes_ = 0;
    std::int64_t high_water_bytes_ = 0;
    std::vector<std::weak_ptr<lt::disk_observer>> waiting_;
    // A room-wait job is with Rust: the cache is full, peers wait for it, not the queue.
    bool room_wait_ = false;
};

} // namespace bae::ffi
