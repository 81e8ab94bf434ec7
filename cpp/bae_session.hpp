// A libtorrent session that does all disk I/O through bae's BaeDisk, plus the few
// libtorrent helpers the Rust side needs (parse a torrent or magnet, create a torrent).
//
// Torrents are named by bae's TorrentId (an int64) on both sides; the id <-> handle map
// is guarded by one mutex, held across add_torrent so an alert for a new torrent cannot
// be looked up before its id is known. Everything that can throw is exposed to Rust as a
// cxx Result; nothing else throws.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include <libtorrent/session.hpp>
#include <libtorrent/torrent_handle.hpp>

#include "rust/cxx.h"

namespace lt = libtorrent;

namespace bae::ffi {

struct SessionOptions;
struct AddRequest;
struct StatusFfi;
struct AlertFfi;
struct MetainfoFfi;
struct MagnetFfi;
struct DiskHandle;
struct Layout;

Layout layout_of(lt::file_storage const& fs);

class Session {
public:
    Session(SessionOptions const& opts, rust::Box<DiskHandle> disk);
    ~Session();

    std::uint16_t listen_port() const;
    void add_torrent(AddRequest const& req) const;
    void remove_torrent(std::int64_t id) const;
    void pause_torrent(std::int64_t id) const;
    void resume_torrent(std::int64_t id) const;
    void set_piece_deadline(std::int64_t id, std::uint32_t piece, std::int32_t deadline_ms) const;
    void set_piece_priority(std::int64_t id, std::uint32_t piece, std::uint8_t priority) const;
    void connect_peer(std::int64_t id, rust::Str addr) const;
    StatusFfi torrent_status(std::int64_t id) const;
    rust::Vec<std::uint32_t> have_pieces(std::int64_t id) const;
    void save_resume_data(std::int64_t id) const;
    rust::Vec<AlertFfi> wait_alerts(std::uint32_t timeout_ms) const;

private:
    lt::torrent_handle find(std::int64_t id) const;
    std::int64_t id_of(lt::torrent_handle const& h) const;
    void collect_alerts(rust::Vec<AlertFfi>& out) const;

    // Declared before session_: the disk object libtorrent owns refers to it, and
    // members are destroyed in reverse order.
    rust::Box<DiskHandle> disk_;
    std::unique_ptr<lt::session> session_;
    mutable std::mutex mutex_;
    mutable std::map<std::int64_t, lt::torrent_handle> by_id_;
    mutable std::map<std::uint32_t, std::int64_t> by_handle_;
};

std::unique_ptr<Session> new_session(SessionOptions const& opts, rust::Box<DiskHandle> disk);
MetainfoFfi parse_torrent(rust::Slice<std::uint8_t const> bytes);
MagnetFfi parse_magnet_uri(rust::Str uri);
rust::Vec<std::uint8_t> make_torrent(rust::Str dir, std::uint64_t piece_len,
                                     rust::Vec<rust::String> const& trackers,
                                     rust::Fn<void(std::uint32_t, std::uint32_t)> progress);

}  // namespace bae::ffi
