// See bae_session.hpp.
#include "bae/cpp/bae_session.hpp"

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <string>

#include <libtorrent/add_torrent_params.hpp>
#include <libtorrent/address.hpp>
#include <libtorrent/alert_types.hpp>
#include <libtorrent/announce_entry.hpp>
#include <libtorrent/create_torrent.hpp>
#include <libtorrent/magnet_uri.hpp>
#include <libtorrent/read_resume_data.hpp>
#include <libtorrent/session_params.hpp>
#include <libtorrent/torrent_info.hpp>
#include <libtorrent/torrent_status.hpp>
#include <libtorrent/write_resume_data.hpp>

#include "bae/cpp/bae_disk.hpp"
#include "bae/src/torrent/bridge.rs.h"

namespace bae::ffi {

namespace {

template <typename Hash>
rust::Vec<std::uint8_t> hash_bytes(Hash const& h) {
    rust::Vec<std::uint8_t> out;
    for (char c : h.to_string()) out.push_back(static_cast<std::uint8_t>(c));
    return out;
}

rust::Vec<std::uint8_t> v1_of(lt::info_hash_t const& ih) {
    return ih.has_v1() ? hash_bytes(ih.v1) : rust::Vec<std::uint8_t>();
}

rust::Vec<std::uint8_t> v2_of(lt::info_hash_t const& ih) {
    return ih.has_v2() ? hash_bytes(ih.v2) : rust::Vec<std::uint8_t>();
}

// "ip:port" or "[ipv6]:port".
lt::tcp::endpoint parse_endpoint(std::string const& s) {
    auto const colon = s.rfind(':');
    if (colon == std::string::npos || colon == 0) throw std::invalid_argument("bad peer address: " + s);
    std::string host = s.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    int const port = std::stoi(s.substr(colon + 1));
    if (port <= 0 || port > 65535) throw std::invalid_argument("bad peer port: " + s);
    return lt::tcp::endpoint(lt::make_address(host), static_cast<std::uint16_t>(port));
}

TorrentStateFfi state_of(lt::torrent_status::state_t s) {
    switch (s) {
    case lt::torrent_status::checking_files: return TorrentStateFfi::CheckingFiles;
    case lt::torrent_status::downloading_metadata: return TorrentStateFfi::DownloadingMetadata;
    case lt::torrent_status::downloading: return TorrentStateFfi::Downloading;
    case lt::torrent_status::finished: return TorrentStateFfi::Finished;
    case lt::torrent_status::seeding: return TorrentStateFfi::Seeding;
    default: return TorrentStateFfi::CheckingResume;
    }
}

AlertFfi alert(AlertKind kind, std::int64_t id, std::uint32_t piece, std::string const& message) {
    AlertFfi a;
    a.kind = kind;
    a.id = id;
    a.piece = piece;
    a.message = rust::String(message);
    return a;
}

std::string bencode_string(std::string const& s) { return std::to_string(s.size()) + ":" + s; }

// A .torrent for a magnet's metadata: the info dict exactly as received (so the info
// hash is unchanged) plus the trackers known now, so a re-added torrent finds peers.
std::string torrent_bytes(lt::torrent_info const& ti, std::vector<lt::announce_entry> const& trackers) {
    std::string out = "d";
    if (!trackers.empty()) {
        out += bencode_string("announce") + bencode_string(trackers.front().url);
        out += bencode_string("announce-list") + "l";
        for (auto const& t : trackers) out += "l" + bencode_string(t.url) + "e";
        out += "e";
    }
    auto const info = ti.info_section();
    out += bencode_string("info") + std::string(info.data(), static_cast<std::size_t>(info.size()));
    out += "e";
    return out;
}

// Adds to `atp` the block bitmaps of pieces the store has not verified, from resume
// data libtorrent saved in an earlier run. A block is marked finished in resume data only
// once its write to the store completed, and the store's chunk files keep written bytes
// across a kill, so those blocks need not be downloaded again. The store stays the only
// authority on verified pieces: libtorrent counts a piece as had only after hashing it
// (through the store) once all its blocks are there. Pieces the earlier run verified but
// the store never recorded get every block marked, so libtorrent hashes them again
// instead of downloading them. The earlier run's have-pieces, paused state and the rest
// are ignored, as is resume data that does not parse or is of another torrent.
void keep_partial_blocks(lt::add_torrent_params& atp, rust::Vec<std::uint8_t> const& resume) {
    lt::error_code ec;
    auto const* data = reinterpret_cast<char const*>(resume.data());
    lt::add_torrent_params const rd =
        lt::read_resume_data(lt::span<char const>(data, static_cast<std::ptrdiff_t>(resume.size())), ec);
    if (ec || !atp.ti || !(rd.info_hashes == atp.ti->info_hashes())) return;
    lt::torrent_info const& ti = *atp.ti;
    auto const store_has = [&](lt::piece_index_t p) {
        return p < atp.have_pieces.end_index() && atp.have_pieces.get_bit(p);
    };
    auto const blocks_in = [&](lt::piece_index_t p) {
        return (ti.piece_size(p) + lt::default_block_size - 1) / lt::default_block_size;
    };
    for (auto const& entry : rd.unfinished_pieces) {
        lt::piece_index_t const piece = entry.first;
        if (piece < lt::piece_index_t(0) || piece >= ti.end_piece() || store_has(piece)) continue;
        lt::bitfield blocks(blocks_in(piece), false);
        int const n = std::min(blocks.size(), entry.second.size());
        for (int i = 0; i < n; ++i)
            if (entry.second.get_bit(i)) blocks.set_bit(i);
        if (!blocks.none_set()) atp.unfinished_pieces[piece] = std::move(blocks);
    }
    lt::piece_index_t const end = std::min(rd.have_pieces.end_index(), ti.end_piece());
    for (lt::piece_index_t p(0); p < end; ++p)
        if (rd.have_pieces.get_bit(p) && !store_has(p)) atp.unfinished_pieces[p] = lt::bitfield(blocks_in(p), true);
}

}  // namespace

std::unique_ptr<Session> new_session(SessionOptions const& opts, rust::Box<DiskHandle> disk) {
    return std::make_unique<Session>(opts, std::move(disk));
}

Session::Session(SessionOptions const& opts, rust::Box<DiskHandle> disk) : disk_(std::move(disk)) {
    lt::settings_pack pack;
    pack.set_str(lt::settings_pack::listen_interfaces, std::string(opts.listen_interfaces));
    pack.set_bool(lt::settings_pack::enable_dht, opts.enable_dht);
    pack.set_bool(lt::settings_pack::enable_lsd, opts.enable_lsd);
    pack.set_bool(lt::settings_pack::enable_upnp, opts.enable_upnp);
    pack.set_bool(lt::settings_pack::enable_natpmp, opts.enable_natpmp);
    pack.set_bool(lt::settings_pack::enable_outgoing_utp, opts.enable_utp);
    pack.set_bool(lt::settings_pack::enable_incoming_utp, opts.enable_utp);
    pack.set_bool(lt::settings_pack::allow_multiple_connections_per_ip,
                  opts.allow_multiple_connections_per_ip);
    pack.set_int(lt::settings_pack::alert_mask, lt::alert_category::status | lt::alert_category::error
                                                    | lt::alert_category::storage
                                                    | lt::alert_category::piece_progress);
    // Auto-managed torrents: libtorrent's queue decides which of many run at once.
    pack.set_int(lt::settings_pack::active_downloads, opts.active_downloads);
    pack.set_int(lt::settings_pack::active_seeds, opts.active_seeds);
    pack.set_int(lt::settings_pack::active_limit, opts.active_limit);
    // A peer asking for a queued album starts it: a library of more albums than
    // active_seeds still seeds each of them on demand.
    pack.set_bool(lt::settings_pack::incoming_starts_queued_torrents, true);
    // Piece alerts drive the store's verified state: do not drop them under load (and
    // if they are dropped anyway, the alert thread reconciles from have-pieces).
    pack.set_int(lt::settings_pack::alert_queue_size, 1 << 16);
    pack.set_int(lt::settings_pack::stop_tracker_timeout, 2);
    pack.set_str(lt::settings_pack::user_agent, "bae/0.1");
    // Finish 4 MiB extents of small pieces before starting others: a chunk can only be
    // uploaded (and the cache's room come back) once every piece overlapping it is in,
    // so scattered pieces would hold the bounded cache full of partial chunks.
    pack.set_bool(lt::settings_pack::piece_extent_affinity, true);
    // A track opened right after `add` must come first: the default picks the first
    // four pieces at random, ignoring the deadlines a waiting read has set (measured:
    // 0.7 s instead of 0.14 s for the first piece over a 4 MB/s link).
    pack.set_int(lt::settings_pack::initial_picker_threshold, 0);
    // A new torrent's first peers are dialled on the session's tick: 500 ms by default,
    // the first half of a 1 s album download on a LAN (measured: first piece 0.55 s after
    // `add`, 0.12 s at 100 ms). Between whole-second ticks a tick only refills rate
    // quotas, so a tenth of a second costs next to nothing. The price: request queues
    // fill sooner, so a crash loses more requested bytes (chaos kill -9 campaign: 13 %
    // re-downloaded against 4.5 % at 500 ms, within its bound of 1 MiB per kill).
    pack.set_int(lt::settings_pack::tick_interval, 100);
    // Bounded by the cache's size: when downloads must wait, libtorrent still reads
    // whatever a peer's socket holds (it drains it whole), and Linux autotunes loopback
    // and LAN receive buffers up to tcp_rmem's maximum (32 MiB here), far past a small
    // cache's bound (measured: 20-30 MB let through per closing; 1-2 MB at 1 MiB).
    if (opts.recv_buffer_bytes > 0)
        pack.set_int(lt::settings_pack::recv_socket_buffer_size, opts.recv_buffer_bytes);

    lt::session_params params(std::move(pack));
    DiskHandle const* rust = &*disk_;
    params.disk_io_constructor = [rust](lt::io_context& ioc, lt::settings_interface const& s, lt::counters&) {
        return std::unique_ptr<lt::disk_interface>(new BaeDisk(ioc, s, *rust));
    };
    session_ = std::make_unique<lt::session>(std::move(params));
}

Session::~Session() {
    // Stops the network thread, then destroys BaeDisk, which joins the Rust workers.
    session_.reset();
}

std::uint16_t Session::listen_port() const { return session_->listen_port(); }

lt::torrent_handle Session::find(std::int64_t id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto const it = by_id_.find(id);
    if (it == by_id_.end()) throw std::invalid_argument("unknown torrent id " + std::to_string(id));
    return it->second;
}

std::int64_t Session::id_of(lt::torrent_handle const& h) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto const it = by_handle_.find(h.id());
    return it == by_handle_.end() ? -1 : it->second;
}

void Session::add_torrent(AddRequest const& req) const {
    lt::add_torrent_params atp;
    if (!req.torrent_bytes.empty()) {
        auto const* data = reinterpret_cast<char const*>(req.torrent_bytes.data());
        atp.ti = std::make_shared<lt::torrent_info>(
            lt::span<char const>(data, static_cast<std::ptrdiff_t>(req.torrent_bytes.size())), lt::from_span);
    } else {
        atp = lt::parse_magnet_uri(std::string(req.magnet));
    }
    atp.save_path = std::string(req.save_path);
    if (!req.have_pieces.empty()) {
        atp.have_pieces.resize(static_cast<int>(req.have_pieces.size()), false);
        for (std::size_t i = 0; i < req.have_pieces.size(); ++i)
            if (req.have_pieces[i]) atp.have_pieces.set_bit(lt::piece_index_t(static_cast<int>(i)));
    }
    if (!req.resume.empty()) keep_partial_blocks(atp, req.resume);
    // A torrent paused by the user is not auto-managed (the queue would resume it).
    atp.flags &= ~(lt::torrent_flags::auto_managed | lt::torrent_flags::paused);
    if (req.paused)
        atp.flags |= lt::torrent_flags::paused;
    else
        atp.flags |= lt::torrent_flags::auto_managed;
    for (auto const& peer : req.peers) atp.peers.push_back(parse_endpoint(std::string(peer)));

    std::lock_guard<std::mutex> lock(mutex_);
    if (by_id_.count(req.id)) throw std::invalid_argument("torrent id already in the session");
    lt::torrent_handle h = session_->add_torrent(std::move(atp));
    by_id_[req.id] = h;
    by_handle_[h.id()] = req.id;
}

void Session::remove_torrent(std::int64_t id) const {
    lt::torrent_handle const h = find(id);
    session_->remove_torrent(h);
    std::lock_guard<std::mutex> lock(mutex_);
    by_handle_.erase(h.id());
    by_id_.erase(id);
}

void Session::pause_torrent(std::int64_t id) const {
    lt::torrent_handle const h = find(id);
    h.unset_flags(lt::torrent_flags::auto_managed);
    h.pause();
}

void Session::resume_torrent(std::int64_t id) const {
    lt::torrent_handle const h = find(id);
    h.set_flags(lt::torrent_flags::auto_managed);
    h.resume();
}

void Session::set_piece_deadline(std::int64_t id, std::uint32_t piece, std::int32_t deadline_ms) const {
    find(id).set_piece_deadline(lt::piece_index_t(static_cast<int>(piece)), deadline_ms);
}

void Session::set_piece_priority(std::int64_t id, std::uint32_t piece, std::uint8_t priority) const {
    find(id).piece_priority(lt::piece_index_t(static_cast<int>(piece)), lt::download_priority_t(priority));
}

void Session::connect_peer(std::int64_t id, rust::Str addr) const {
    find(id).connect_peer(parse_endpoint(std::string(addr)));
}

StatusFfi Session::torrent_status(std::int64_t id) const {
    lt::torrent_status const st = find(id).status();
    StatusFfi out;
    out.state = state_of(st.state);
    out.paused = bool(st.flags & lt::torrent_flags::paused);
    out.progress = st.progress;
    out.download_rate = st.download_payload_rate;
    out.upload_rate = st.upload_payload_rate;
    out.peers = static_cast<std::uint32_t>(st.num_peers);
    out.seeds = static_cast<std::uint32_t>(st.num_seeds);
    out.pieces_have = static_cast<std::uint32_t>(st.num_pieces);
    out.pieces_total = st.has_metadata && st.torrent_file.lock()
        ? static_cast<std::uint32_t>(st.torrent_file.lock()->num_pieces()) : 0;
    out.total_done = st.total_done;
    out.total_wanted = st.total_wanted;
    if (st.errc) out.error = rust::String(st.errc.message());
    return out;
}

rust::Vec<std::uint32_t> Session::have_pieces(std::int64_t id) const {
    lt::torrent_status const st = find(id).status(lt::torrent_handle::query_pieces);
    rust::Vec<std::uint32_t> out;
    for (lt::piece_index_t i(0); i < st.pieces.end_index(); ++i)
        if (st.pieces.get_bit(i)) out.push_back(static_cast<std::uint32_t>(static_cast<int>(i)));
    return out;
}

void Session::save_resume_data(std::int64_t id) const { find(id).save_resume_data({}); }

rust::Vec<AlertFfi> Session::wait_alerts(std::uint32_t timeout_ms) const {
    rust::Vec<AlertFfi> out;
    if (!session_->wait_for_alert(lt::milliseconds(timeout_ms))) return out;
    // Not a cxx Result: a torrent removed meanwhile makes handle calls throw; report
    // that as a session error rather than letting it cross the bridge.
    try {
        collect_alerts(out);
    } catch (std::exception const& e) {
        out.push_back(alert(AlertKind::SessionError, -1, 0, std::string("reading alerts: ") + e.what()));
    }
    return out;
}

void Session::collect_alerts(rust::Vec<AlertFfi>& out) const {
    std::vector<lt::alert*> alerts;
    session_->pop_alerts(&alerts);
    for (lt::alert const* a : alerts) {
        if (auto const* p = lt::alert_cast<lt::piece_finished_alert>(a)) {
            out.push_back(alert(AlertKind::PieceFinished, id_of(p->handle),
                                static_cast<std::uint32_t>(static_cast<int>(p->piece_index)), ""));
        } else if (auto const* p = lt::alert_cast<lt::hash_failed_alert>(a)) {
            out.push_back(alert(AlertKind::HashFailed, id_of(p->handle),
                                static_cast<std::uint32_t>(static_cast<int>(p->piece_index)), ""));
        } else if (auto const* p = lt::alert_cast<lt::torrent_finished_alert>(a)) {
            out.push_back(alert(AlertKind::TorrentFinished, id_of(p->handle), 0, ""));
        } else if (auto const* p = lt::alert_cast<lt::torrent_checked_alert>(a)) {
            out.push_back(alert(AlertKind::TorrentChecked, id_of(p->handle), 0, ""));
        } else if (auto const* p = lt::alert_cast<lt::metadata_received_alert>(a)) {
            AlertFfi m = alert(AlertKind::MetadataReceived, id_of(p->handle), 0, "");
            if (auto ti = p->handle.torrent_file()) {
                std::string const torrent = torrent_bytes(*ti, p->handle.trackers());
                for (char c : torrent) m.bytes.push_back(static_cast<std::uint8_t>(c));
            }
            out.push_back(std::move(m));
        } else if (auto const* p = lt::alert_cast<lt::torrent_error_alert>(a)) {
            out.push_back(alert(AlertKind::TorrentError, id_of(p->handle), 0, p->message()));
        } else if (auto const* p = lt::alert_cast<lt::file_error_alert>(a)) {
            out.push_back(alert(AlertKind::TorrentError, id_of(p->handle), 0, p->message()));
        } else if (auto const* p = lt::alert_cast<lt::save_resume_data_alert>(a)) {
            AlertFfi m = alert(AlertKind::ResumeData, id_of(p->handle), 0, "");
            std::vector<char> const buf = lt::write_resume_data_buf(p->params);
            m.bytes.reserve(buf.size());
            for (char c : buf) m.bytes.push_back(static_cast<std::uint8_t>(c));
            out.push_back(std::move(m));
        } else if (auto const* p = lt::alert_cast<lt::save_resume_data_failed_alert>(a)) {
            out.push_back(alert(AlertKind::ResumeDataFailed, id_of(p->handle), 0, p->message()));
        } else if (lt::alert_cast<lt::alerts_dropped_alert>(a)) {
            out.push_back(alert(AlertKind::AlertsDropped, -1, 0, "alert queue overflowed"));
        } else if (auto const* p = lt::alert_cast<lt::listen_failed_alert>(a)) {
            out.push_back(alert(AlertKind::SessionError, -1, 0, p->message()));
        }
    }
}

MetainfoFfi parse_torrent(rust::Slice<std::uint8_t const> bytes) {
    lt::error_code ec;
    auto const* data = reinterpret_cast<char const*>(bytes.data());
    lt::torrent_info ti(lt::span<char const>(data, static_cast<std::ptrdiff_t>(bytes.size())), ec, lt::from_span);
    if (ec) throw std::invalid_argument(ec.message());
    MetainfoFfi out;
    out.name = rust::String(ti.name());
    out.info_hash_v1 = v1_of(ti.info_hashes());
    out.info_hash_v2 = v2_of(ti.info_hashes());
    out.layout = layout_of(ti.files());
    return out;
}

MagnetFfi parse_magnet_uri(rust::Str uri) {
    lt::error_code ec;
    lt::add_torrent_params p = lt::parse_magnet_uri(std::string(uri), ec);
    if (ec) throw std::invalid_argument(ec.message());
    if (!p.info_hashes.has_v1() && !p.info_hashes.has_v2()) throw std::invalid_argument("magnet link has no info hash");
    MagnetFfi out;
    out.name = rust::String(p.name);
    out.info_hash_v1 = v1_of(p.info_hashes);
    out.info_hash_v2 = v2_of(p.info_hashes);
    for (auto const& t : p.trackers) out.trackers.push_back(rust::String(t));
    for (auto const& e : p.peers) {
        std::string const host = e.address().is_v6() ? "[" + e.address().to_string() + "]" : e.address().to_string();
        out.peers.push_back(rust::String(host + ":" + std::to_string(e.port())));
    }
    return out;
}

rust::Vec<std::uint8_t> make_torrent(rust::Str dir, std::uint64_t piece_len,
                                     rust::Vec<rust::String> const& trackers,
                                     rust::Fn<void(std::uint32_t, std::uint32_t)> progress) {
    namespace fs = std::filesystem;
    fs::path const root = fs::canonical(fs::path(std::string(dir)));
    lt::file_storage files;
    lt::add_files(files, root.string(), lt::create_torrent::modification_time);
    if (files.num_files() == 0) throw std::invalid_argument("no files to put in a torrent");
    lt::create_torrent ct(files, static_cast<int>(piece_len), lt::create_torrent::modification_time);
    int tier = 0;
    for (auto const& t : trackers) ct.add_tracker(std::string(t), tier++);
    lt::error_code ec;
    auto const pieces = static_cast<std::uint32_t>(ct.num_pieces());
    lt::set_piece_hashes(
        ct, root.parent_path().string(),
        [&](lt::piece_index_t p) {
            progress(static_cast<std::uint32_t>(static_cast<int>(p)) + 1, pieces);
        },
        ec);
    if (ec) throw std::runtime_error(ec.message());
    rust::Vec<std::uint8_t> out;
    for (char c : ct.generate_buf()) out.push_back(static_cast<std::uint8_t>(c));
    return out;
}

}  // namespace bae::ffi
