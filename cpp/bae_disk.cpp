// See bae_disk.hpp for the shape and the invariants.
#include "bae/cpp/bae_disk.hpp"

#include <cerrno>
#include <cstring>

#include <boost/asio/post.hpp>
#include <libtorrent/aux_/vector.hpp>
#include <libtorrent/disk_observer.hpp>
#include <libtorrent/error_code.hpp>
#include <libtorrent/file_storage.hpp>
#include <libtorrent/peer_request.hpp>
#include <libtorrent/storage_defs.hpp>

#include "bae/src/torrent/bridge.rs.h"

namespace bae::ffi {

namespace {

// Read buffers handed to libtorrent are plain heap arrays; this frees them.
struct HeapBuffers final : lt::buffer_allocator_interface {
    void free_disk_buffer(char* buf) override { delete[] buf; }
};
HeapBuffers heap_buffers;

lt::storage_error to_storage_error(JobResult const& r) {
    if (r.os_error == 0) return {};
    lt::operation_t op = lt::operation_t::file_read;
    if (r.op == DiskOp::Write) op = lt::operation_t::file_write;
    if (r.op == DiskOp::Check) op = lt::operation_t::check_resume;
    // System category: ECANCELED then compares equal to asio's operation_aborted.
    return lt::storage_error(lt::error_code(r.os_error, boost::system::system_category()), op);
}

lt::storage_error unsupported() {
    return lt::storage_error(
        lt::error_code(boost::system::errc::operation_not_supported, boost::system::generic_category()),
        lt::operation_t::file);
}

}  // namespace

struct Completions::Done {
    Finish finish;
    JobResult result;
    WorkGuard guard;
};

Completions::Completions(lt::io_context& ioc) : ioc_(ioc) {}
Completions::~Completions() = default;

void Completions::add(Finish finish, JobResult result, WorkGuard guard) {
    bool post = false;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        ready_.push_back(Done{std::move(finish), std::move(result), std::move(guard)});
        post = !posted_;
        posted_ = true;
    }
    if (post) boost::asio::post(ioc_, [self = shared_from_this()] { self->run(); });
}

void Completions::run() {
    std::vector<Done> batch;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        batch.swap(ready_);
        posted_ = false;
    }
    // Handlers may submit jobs that finish at once: they go to the next post.
    for (auto& d : batch) {
        d.finish(d.result);
        d.guard.reset();
    }
}

DiskJob::DiskJob(std::shared_ptr<Completions> completions, Finish finish)
    : completions_(std::move(completions)),
      finish_(std::move(finish)),
      guard_(boost::asio::make_work_guard(completions_->ioc())) {}

DiskJob::~DiskJob() {
    if (completed_) return;
    JobResult aborted;
    aborted.os_error = ECANCELED;
    aborted.op = DiskOp::Read;
    aborted.check = CheckStatus::Fatal;
    complete(std::move(aborted));
}

void DiskJob::complete(JobResult result) {
    if (completed_) return;
    completed_ = true;
    completions_->add(std::move(finish_), std::move(result), std::move(guard_));
}

void complete_job(std::unique_ptr<DiskJob> job, JobResult result) {
    if (job) job->complete(std::move(result));
}

Layout layout_of(lt::file_storage const& fs) {
    Layout layout;
    layout.piece_len = static_cast<std::uint64_t>(fs.piece_length());
    layout.total_len = static_cast<std::uint64_t>(fs.total_size());
    std::string const prefix = fs.name() + "/";
    for (lt::file_index_t i : fs.file_range()) {
        FileEntry entry;
        std::string path = fs.file_path(i);
        // Multi-file torrents prefix every path with the torrent's name: drop it.
        if (path.compare(0, prefix.size(), prefix) == 0) path.erase(0, prefix.size());
        std::size_t start = 0;
        while (start <= path.size()) {
            std::size_t const end = std::min(path.find('/', start), path.size());
            entry.path.push_back(rust::String(path.substr(start, end - start)));
            start = end + 1;
        }
        entry.len = static_cast<std::uint64_t>(fs.file_size(i));
        entry.pad = fs.pad_file_at(i);
        entry.mtime = static_cast<std::int64_t>(fs.mtime(i));
        layout.files.push_back(std::move(entry));
    }
    return layout;
}

BaeDisk::BaeDisk(lt::io_context& ioc, lt::settings_interface const& settings, DiskHandle const& rust)
    : ioc_(ioc), completions_(std::make_shared<Completions>(ioc)), settings_(settings), rust_(rust) {
    settings_updated();
}

BaeDisk::~BaeDisk() { rust_.shutdown(); }

// The session is shutting down: queued reads and hashes are answered as aborted
// rather than run, so a slow remote cannot hold up shutdown. Writes still run.
void BaeDisk::abort(bool) { rust_.abort(); }

void BaeDisk::settings_updated() {
    high_water_bytes_ = settings_.get_int(lt::settings_pack::max_queued_disk_bytes);
}

std::unique_ptr<DiskJob> BaeDisk::job(DiskJob::Finish finish) {
    return std::make_unique<DiskJob>(completions_, std::move(finish));
}

lt::storage_holder BaeDisk::new_torrent(lt::storage_params const& p, std::shared_ptr<void> const&) {
    std::size_t idx = 0;
    while (idx < used_.size() && used_[idx]) ++idx;
    if (idx == used_.size()) used_.push_back(true);
    used_[idx] = true;
    rust_.open_storage(static_cast<std::uint32_t>(idx), p.path, layout_of(p.files));
    return lt::storage_holder(lt::storage_index_t(static_cast<int>(idx)), *this);
}

void BaeDisk::remove_torrent(lt::storage_index_t storage) {
    auto const idx = static_cast<std::size_t>(static_cast<int>(storage));
    rust_.close_storage(static_cast<std::uint32_t>(idx));
    if (idx < used_.size()) used_[idx] = false;
}

static std::uint32_t u32(lt::storage_index_t s) { return static_cast<std::uint32_t>(static_cast<int>(s)); }
static std::uint32_t u32(lt::piece_index_t p) { return static_cast<std::uint32_t>(static_cast<int>(p)); }

void BaeDisk::async_read(lt::storage_index_t storage, lt::peer_request const& r,
                         std::function<void(lt::disk_buffer_holder, lt::storage_error const&)> handler,
                         lt::disk_job_flags_t) {
    int const len = r.length;
    auto j = job([handler = std::move(handler), len](JobResult const& res) {
        lt::storage_error const err = to_storage_error(res);
        if (err || res.data.size() != static_cast<std::size_t>(len)) {
            handler(lt::disk_buffer_holder(), err ? err : lt::storage_error(
                lt::error_code(EIO, boost::system::system_category()), lt::operation_t::file_read));
            return;
        }
        char* buf = new char[static_cast<std::size_t>(len)];
        std::memcpy(buf, res.data.data(), res.data.size());
        handler(lt::disk_buffer_holder(heap_buffers, buf, len), err);
    });
    rust_.submit_read(u32(storage), u32(r.piece), static_cast<std::uint32_t>(r.start),
                      static_cast<std::uint32_t>(len), std::move(j));
}

bool BaeDisk::async_write(lt::storage_index_t storage, lt::peer_request const& r, char const* buf,
                          std::shared_ptr<lt::disk_observer> observer,
                          std::function<void(lt::storage_error const&)> handler, lt::disk_job_flags_t) {
    int const len = r.length;
    auto j = job([this, handler = std::move(handler), len](JobResult const& res) {
        write_done(len);
        handler(to_storage_error(res));
    });
    queued_write_bytes_ += len;
    // The Rust side copies the block before returning: buf is only valid during this call.
    bool const no_room = rust_.submit_write(
        u32(storage), u32(r.piece), static_cast<std::uint32_t>(r.start),
        rust::Slice<std::uint8_t const>(reinterpret_cast<std::uint8_t const*>(buf),
                                        static_cast<std::size_t>(len)),
        std::move(j));
    bool const exceeded = no_room || queued_write_bytes_ > high_water_bytes_;
    if (exceeded && observer) waiting_.push_back(observer);
    if (no_room && !room_wait_) {
        room_wait_ = true;
        rust_.wait_for_room(job([this](JobResult const&) {
            room_wait_ = false;
            wake_waiting();
        }));
    }
    return exceeded;
}

void BaeDisk::write_done(int len) {
    queued_write_bytes_ -= len;
    // While the cache is full, waking peers would only have them blocked again.
    if (room_wait_ || queued_write_bytes_ > high_water_bytes_ / 2) return;
    wake_waiting();
}

void BaeDisk::wake_waiting() {
    if (waiting_.empty()) return;
    std::vector<std::weak_ptr<lt::disk_observer>> waiting;
    waiting.swap(waiting_);
    for (auto const& w : waiting) {
        if (auto o = w.lock()) o->on_disk();
    }
}

void BaeDisk::async_hash(lt::storage_index_t storage, lt::piece_index_t piece,
                         lt::span<lt::sha256_hash> v2, lt::disk_job_flags_t flags,
                         std::function<void(lt::piece_index_t, lt::sha1_hash const&,
                                            lt::storage_error const&)> handler) {
    auto j = job([handler = std::move(handler), piece, v2](JobResult const& res) {
        lt::storage_error err = to_storage_error(res);
        lt::sha1_hash v1;
        std::size_t const want = 20 + 32 * static_cast<std::size_t>(v2.size());
        if (!err && res.data.size() <= want && res.data.size() >= 20) {
            std::memcpy(v1.data(), res.data.data(), 20);
            // Rust fills only the blocks the piece has; the rest stay zero.
            std::size_t const blocks = (res.data.size() - 20) / 32;
            for (std::size_t b = 0; b < blocks; ++b)
                std::memcpy(v2[static_cast<std::ptrdiff_t>(b)].data(), res.data.data() + 20 + 32 * b, 32);
        } else if (!err) {
            err = lt::storage_error(lt::error_code(EIO, boost::system::system_category()),
                                    lt::operation_t::file_read);
        }
        handler(piece, v1, err);
    });
    rust_.submit_hash(u32(storage), u32(piece), bool(flags & lt::disk_interface::v1_hash),
                      static_cast<std::uint32_t>(v2.size()), std::move(j));
}

void BaeDisk::async_hash2(lt::storage_index_t storage, lt::piece_index_t piece, int offset,
                          lt::disk_job_flags_t,
                          std::function<void(lt::piece_index_t, lt::sha256_hash const&,
                                             lt::storage_error const&)> handler) {
    auto j = job([handler = std::move(handler), piece](JobResult const& res) {
        lt::storage_error err = to_storage_error(res);
        lt::sha256_hash h;
        if (!err && res.data.size() == 32) std::memcpy(h.data(), res.data.data(), 32);
        else if (!err) err = lt::storage_error(lt::error_code(EIO, boost::system::system_category()),
                                               lt::operation_t::file_read);
        handler(piece, h, err);
    });
    rust_.submit_hash2(u32(storage), u32(piece), static_cast<std::uint32_t>(offset), std::move(j));
}

void BaeDisk::async_check_files(lt::storage_index_t storage, lt::add_torrent_params const*,
                                lt::aux::vector<std::string, lt::file_index_t>,
                                std::function<void(lt::status_t, lt::storage_error const&)> handler) {
    // The have-pieces handed to add_torrent come from the store; Rust answers whether
    // libtorrent may trust them or must hash the data once.
    auto j = job([handler = std::move(handler)](JobResult const& res) {
        lt::status_t status = lt::status_t::no_error;
        if (res.check == CheckStatus::NeedFullCheck) status = lt::status_t::need_full_check;
        if (res.check == CheckStatus::Fatal || res.os_error != 0) status = lt::status_t::fatal_disk_error;
        handler(status, to_storage_error(res));
    });
    rust_.submit_check(u32(storage), std::move(j));
}

void BaeDisk::async_clear_piece(lt::storage_index_t storage, lt::piece_index_t piece,
                                std::function<void(lt::piece_index_t)> handler) {
    auto j = job([handler = std::move(handler), piece](JobResult const&) { handler(piece); });
    rust_.submit_clear_piece(u32(storage), u32(piece), std::move(j));
}

void BaeDisk::async_release_files(lt::storage_index_t storage, std::function<void()> handler) {
    auto j = job([handler = std::move(handler)](JobResult const&) { if (handler) handler(); });
    rust_.submit_flush(u32(storage), std::move(j));
}

void BaeDisk::async_stop_torrent(lt::storage_index_t storage, std::function<void()> handler) {
    auto j = job([handler = std::move(handler)](JobResult const&) { if (handler) handler(); });
    rust_.submit_flush(u32(storage), std::move(j));
}

// The chunk store has no files to move or rename: the data stays where it is.
void BaeDisk::async_move_storage(lt::storage_index_t, std::string path, lt::move_flags_t,
                                 std::function<void(lt::status_t, std::string const&,
                                                    lt::storage_error const&)> handler) {
    job([handler = std::move(handler), path = std::move(path)](JobResult const&) {
        handler(lt::status_t::fatal_disk_error, path, unsupported());
    })->complete(JobResult{});
}

void BaeDisk::async_rename_file(lt::storage_index_t, lt::file_index_t index, std::string name,
                                std::function<void(std::string const&, lt::file_index_t,
                                                   lt::storage_error const&)> handler) {
    job([handler = std::move(handler), index, name = std::move(name)](JobResult const&) {
        handler(name, index, unsupported());
    })->complete(JobResult{});
}

// Deleting a torrent's chunks is the catalog's decision (`bae remove --purge`), not
// libtorrent's: acknowledge once pending writes are done.
void BaeDisk::async_delete_files(lt::storage_index_t storage, lt::remove_flags_t,
                                 std::function<void(lt::storage_error const&)> handler) {
    auto j = job([handler = std::move(handler)](JobResult const& res) { handler(to_storage_error(res)); });
    rust_.submit_flush(u32(storage), std::move(j));
}

// The chunk store keeps every piece in the same place whatever its priority: no part file.
void BaeDisk::async_set_file_priority(
    lt::storage_index_t, lt::aux::vector<lt::download_priority_t, lt::file_index_t> prio,
    std::function<void(lt::storage_error const&,
                       lt::aux::vector<lt::download_priority_t, lt::file_index_t>)> handler) {
    job([handler = std::move(handler), prio = std::move(prio)](JobResult const&) {
        handler(lt::storage_error(), prio);
    })->complete(JobResult{});
}

}  // namespace bae::ffi
