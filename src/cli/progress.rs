//! Progress display for long commands (`import`, `verify`, `init --restore`, `evict`,
//! `remove --purge`, `add --wait`), on stderr only, so stdout (results, JSON) is the same
//! with or without it.
//!
//! Invariants: a bar is drawn only when stderr is a terminal, `--no-progress` was not
//! given and `TERM` is not `dumb`; on a dumb terminal a few plain lines are written
//! (no escape codes), and with no terminal nothing at all. Positions are what the
//! work reports (bytes stored, checks done, objects deleted); nothing advances on a
//! timer (a spinner only animates when the total is unknown). While a bar is shown,
//! Ctrl-C clears it before the process exits, so the terminal is left clean.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Set by `--no-progress`.
static DISABLED: AtomicBool = AtomicBool::new(false);

pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// What the numbers count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// Items, named in the plural ("checks", "torrents", "objects").
    Items(&'static str),
}

/// How progress is shown, from the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    /// Plain lines at every tenth of the way (a terminal that cannot redraw a line).
    Lines,
    Bar {
        color: bool,
    },
}

/// Decides the mode: `disabled` is `--no-progress`, `term` is `$TERM`, `no_color`
/// whether `$NO_COLOR` is set to something non-empty (no-color.org).
pub fn choose_mode(disabled: bool, stderr_tty: bool, term: Option<&str>, no_color: bool) -> Mode {
    if disabled || !stderr_tty {
        return Mode::Off;
    }
    match term {
        Some("dumb") => Mode::Lines,
        _ => Mode::Bar { color: !no_color },
    }
}

fn mode_from_env() -> Mode {
    let term = std::env::var("TERM").ok();
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    choose_mode(
        DISABLED.load(Ordering::Relaxed),
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        term.as_deref(),
        no_color,
    )
}

/// `done of total` in the unit, for plain lines and the bar's final message.
pub fn amount(unit: Unit, done: u64, total: u64) -> String {
    match (unit, total) {
        (Unit::Bytes, 0) => format!("{}", HumanBytes(done)),
        (Unit::Bytes, _) => format!("{}/{}", HumanBytes(done), HumanBytes(total)),
        (Unit::Items(name), 0) => format!("{done} {name}"),
        (Unit::Items(name), _) => format!("{done}/{total} {name}"),
    }
}

/// The tenth of the way `done` has reached (0..=10); `None` when the total is unknown.
pub fn tenth(done: u64, total: u64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    Some((done.min(total) as u128 * 10 / total as u128) as u64)
}

/// The plain line for `done` of `total`, when it is worth printing: at each new tenth
/// of the way (`last` is the tenth last printed).
pub fn plain_line(
    label: &str,
    unit: Unit,
    done: u64,
    total: u64,
    last: Option<u64>,
) -> Option<(u64, String)> {
    let t = tenth(done, total)?;
    if last.is_some_and(|l| t <= l) {
        return None;
    }
    Some((
        t,
        format!("{label}: {} ({}%)", amount(unit, done, total), t * 10),
    ))
}

fn bar_template(unit: Unit, color: bool, known_total: bool) -> String {
    let bar = if color {
        "{bar:20.cyan/blue}"
    } else {
        "{bar:20}"
    };
    match (unit, known_total) {
        (Unit::Bytes, true) => format!(
            "{{msg}} [{bar}] {{binary_bytes}}/{{binary_total_bytes}} {{binary_bytes_per_sec}} eta {{eta}}"
        ),
        (Unit::Items(name), true) => {
            format!("{{msg}} [{bar}] {{human_pos}}/{{human_len}} {name} {{per_sec:1}} eta {{eta}}")
        }
        (Unit::Bytes, false) => {
            "{spinner} {msg} {binary_bytes} {binary_bytes_per_sec} {elapsed}".into()
        }
        (Unit::Items(name), false) => format!("{{spinner}} {{msg}} {{human_pos}} {name} {{elapsed}}"),
    }
}

/// Room the numbers of a bar line take besides its label (bar, counts, rate, eta).
const NUMBERS_WIDTH: usize = 66;
/// The same for a spinner (spinner, count, rate, time taken).
const SPINNER_NUMBERS_WIDTH: usize = 36;

/// `label` cut (with an ellipsis) so a line of `numbers` more columns fits `width`: a
/// line that wraps cannot be redrawn in place.
pub fn fit_label(label: &str, width: usize, numbers: usize) -> String {
    let room = width.saturating_sub(numbers).max(12);
    if label.chars().count() <= room {
        return label.to_owned();
    }
    let mut cut: String = label.chars().take(room - 1).collect();
    cut.push('…');
    cut
}

/// Columns of the terminal on stderr (80 when it does not say).
fn term_width() -> usize {
    // SAFETY: TIOCGWINSZ writes one winsize into the struct given; fd 2 may be anything.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) } == 0;
    // Like the bar's own drawing code: no size unless both are known.
    if ok && ws.ws_col > 0 && ws.ws_row > 0 {
        ws.ws_col as usize
    } else {
        80
    }
}

fn style(unit: Unit, color: bool, known_total: bool) -> ProgressStyle {
    ProgressStyle::with_template(&bar_template(unit, color, known_total))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The bar shown now, cleared by the Ctrl-C handler.
static CURRENT: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Runs `f` (which writes to stderr) with the bar shown, if any, out of its way.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    let bar = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match bar {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

/// Installs (once) a SIGINT handler that clears the bar shown and exits with 130, as the
/// default action would, but without leaving a half-drawn line behind.
fn install_interrupt_handler() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        // Registered here, before returning, so no Ctrl-C falls between.
        let sig = {
            let _g = rt.enter();
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        };
        let Ok(mut sig) = sig else { return };
        let spawned = std::thread::Builder::new()
            .name("bae-sigint".into())
            .spawn(move || {
                rt.block_on(sig.recv());
                let bar = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                let _ = writeln!(std::io::stderr(), "bae: interrupted");
                std::process::exit(130);
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no Ctrl-C handler for the progress bar");
        }
    });
}

enum Inner {
    Off,
    Lines {
        last: Option<u64>,
        done: u64,
        total: u64,
    },
    Bar {
        bar: ProgressBar,
        color: bool,
        known_total: bool,
    },
}

/// One operation's progress. Dropped unfinished (an error), a bar is left as it was,
/// so the error line that follows reads after it.
pub struct Progress {
    label: String,
    unit: Unit,
    inner: Inner,
    /// Why the count stands still, shown after the label (e.g. "paused").
    note: Option<String>,
}

/// A bar's message: `label`, cut to fit `width` with `numbers` columns beside it, and
/// `note` after it in parentheses, never cut (it says why nothing moves).
pub fn noted_label(label: &str, note: Option<&str>, width: usize, numbers: usize) -> String {
    match note {
        None => fit_label(label, width, numbers),
        Some(n) => {
            let room = numbers + n.chars().count() + 3;
            format!("{} ({n})", fit_label(label, width, room))
        }
    }
}

impl Progress {
    /// Progress of `label` (e.g. "verifying Album") counted in `unit`; the total is
    /// given with each update (0: not known yet).
    pub fn new(label: impl Into<String>, unit: Unit) -> Progress {
        Progress::with_mode(label.into(), unit, mode_from_env())
    }

    fn with_mode(label: String, unit: Unit, mode: Mode) -> Progress {
        let inner = match mode {
            Mode::Off => Inner::Off,
            Mode::Lines => Inner::Lines {
                last: None,
                done: 0,
                total: 0,
            },
            Mode::Bar { color } => {
                install_interrupt_handler();
                let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
                bar.set_style(style(unit, color, false));
                bar.set_message(fit_label(&label, term_width(), SPINNER_NUMBERS_WIDTH));
                // Animation only; the numbers move when the work reports.
                bar.enable_steady_tick(Duration::from_millis(120));
                *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
                Inner::Bar {
                    bar,
                    color,
                    known_total: false,
                }
            }
        };
        Progress {
            label,
            unit,
            inner,
            note: None,
        }
    }

    /// Says why the count stands still (`None`: it moves again). A plain line is
    /// written when the note changes.
    pub fn set_note(&mut self, note: Option<&str>) {
        if self.note.as_deref() == note {
            return;
        }
        let was = self.note.take();
        self.note = note.map(str::to_owned);
        match &self.inner {
            Inner::Off => {}
            Inner::Lines { .. } => {
                let now = note.unwrap_or(if was.is_some() { "going on" } else { "" });
                if !now.is_empty() {
                    let _ = writeln!(std::io::stderr(), "{}: {now}", self.label);
                }
            }
            Inner::Bar {
                bar, known_total, ..
            } => {
                let numbers = if *known_total {
                    NUMBERS_WIDTH
                } else {
                    SPINNER_NUMBERS_WIDTH
                };
                bar.set_message(noted_label(&self.label, note, term_width(), numbers));
            }
        }
    }

    /// `done` of `total` (0: unknown) units are finished.
    pub fn set(&mut self, done: u64, total: u64) {
        match &mut self.inner {
            Inner::Off => {}
            Inner::Lines {
                last,
                done: d,
                total: t,
            } => {
                (*d, *t) = (done, total);
                if let Some((tenth, line)) = plain_line(&self.label, self.unit, done, total, *last)
                {
                    *last = Some(tenth);
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
            }
            Inner::Bar {
                bar,
                color,
                known_total,
            } => {
                // Length and position first: the new style draws at once.
                if total > 0 {
                    bar.set_length(total);
                }
                bar.set_position(done);
                if total > 0 && !*known_total {
                    *known_total = true;
                    bar.disable_steady_tick();
                    bar.set_message(noted_label(
                        &self.label,
                        self.note.as_deref(),
                        term_width(),
                        NUMBERS_WIDTH,
                    ));
                    bar.set_style(style(self.unit, *color, true));
                }
            }
        }
    }

    /// The work is done: a bar stays on screen at its final count.
    pub fn finish(mut self) {
        self.end(true);
    }

    /// The work is done and not worth a line of its own (a step of a longer command).
    pub fn clear(mut self) {
        if let Inner::Bar { bar, .. } = std::mem::replace(&mut self.inner, Inner::Off) {
            CURRENT.lock().unwrap_or_else(|e| e.into_inner()).take();
            bar.finish_and_clear();
        }
    }

    fn end(&mut self, ok: bool) {
        match std::mem::replace(&mut self.inner, Inner::Off) {
            Inner::Off => {}
            Inner::Lines { last, done, total } => {
                // The last line always says where it ended.
                if ok && (total == 0 || last != tenth(done, total)) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "{}: {}",
                        self.label,
                        amount(self.unit, done, total)
                    );
                }
            }
            Inner::Bar { bar, .. } => {
                CURRENT.lock().unwrap_or_else(|e| e.into_inner()).take();
                bar.disable_steady_tick();
                if ok {
                    if bar.length() == Some(0) {
                        // A spinner that never learnt a total: say what was done.
                        let pos = bar.position();
                        bar.set_style(
                            ProgressStyle::with_template("{msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_bar()),
                        );
                        bar.abandon_with_message(format!(
                            "{}: {}",
                            self.label,
                            amount(self.unit, pos, 0)
                        ));
                    } else {
                        // Not `finish`, which would move the bar to its end: the last
                        // count shown is the last one the work reported.
                        bar.abandon();
                    }
                } else {
                    bar.abandon();
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.end(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_only_on_a_terminal_that_can_redraw() {
        assert_eq!(
            choose_mode(false, true, Some("xterm"), false),
            Mode::Bar { color: true }
        );
        assert_eq!(
            choose_mode(false, true, None, true),
            Mode::Bar { color: false }
        );
        assert_eq!(choose_mode(false, true, Some("dumb"), false), Mode::Lines);
        assert_eq!(choose_mode(false, false, Some("xterm"), false), Mode::Off);
        assert_eq!(choose_mode(true, true, Some("xterm"), false), Mode::Off);
        assert_eq!(choose_mode(true, true, Some("dumb"), false), Mode::Off);
    }

    #[test]
    fn amounts_name_their_unit() {
        assert_eq!(amount(Unit::Items("checks"), 3, 12), "3/12 checks");
        assert_eq!(amount(Unit::Items("chunks"), 7, 0), "7 chunks");
        assert_eq!(amount(Unit::Bytes, 1024, 2048), "1.00 KiB/2.00 KiB");
        assert_eq!(amount(Unit::Bytes, 512, 0), "512 B");
    }

    #[test]
    fn plain_lines_at_each_new_tenth_only() {
        let u = Unit::Items("checks");
        assert_eq!(
            plain_line("v", u, 0, 40, None),
            Some((0, "v: 0/40 checks (0%)".into()))
        );
        assert_eq!(plain_line("v", u, 3, 40, Some(0)), None);
        assert_eq!(
            plain_line("v", u, 4, 40, Some(0)),
            Some((1, "v: 4/40 checks (10%)".into()))
        );
        // A jump over several tenths prints once.
        assert_eq!(
            plain_line("v", u, 39, 40, Some(1)),
            Some((9, "v: 39/40 checks (90%)".into()))
        );
        assert_eq!(
            plain_line("v", u, 40, 40, Some(9)),
            Some((10, "v: 40/40 checks (100%)".into()))
        );
        assert_eq!(plain_line("v", u, 40, 40, Some(10)), None);
        // Unknown totals print nothing until the end.
        assert_eq!(plain_line("v", u, 5, 0, None), None);
        // More than the total (a total that shrank) does not pass 100%.
        assert_eq!(tenth(50, 40), Some(10));
        assert_eq!(tenth(u64::MAX - 1, u64::MAX), Some(9));
    }

    #[test]
    fn long_labels_are_cut_to_fit_the_line() {
        assert_eq!(
            fit_label("verifying Album", 120, NUMBERS_WIDTH),
            "verifying Album"
        );
        let long = "verifying Ünïcode Artist - A Very Long Album Title (Deluxe Edition)";
        let cut = fit_label(long, 100, NUMBERS_WIDTH);
        assert_eq!(cut.chars().count(), 100 - NUMBERS_WIDTH);
        assert!(cut.ends_with('…') && long.starts_with(cut.trim_end_matches('…')));
        // A narrow terminal still shows the start of the name.
        assert_eq!(fit_label(long, 40, NUMBERS_WIDTH).chars().count(), 12);
        assert_eq!(
            fit_label(long, 80, SPINNER_NUMBERS_WIDTH).chars().count(),
            44
        );
    }

    #[test]
    fn a_note_follows_the_label_and_is_never_cut() {
        assert_eq!(
            noted_label("downloading Album", None, 120, NUMBERS_WIDTH),
            "downloading Album"
        );
        assert_eq!(
            noted_label("downloading Album", Some("paused"), 120, NUMBERS_WIDTH),
            "downloading Album (paused)"
        );
        let long = "downloading Ünïcode Artist - A Very Long Album Title (Deluxe Edition)";
        let m = noted_label(long, Some("paused"), 100, NUMBERS_WIDTH);
        assert!(m.ends_with("… (paused)"), "{m}");
        assert_eq!(m.chars().count(), 100 - NUMBERS_WIDTH);
    }

    #[test]
    fn templates_parse() {
        for unit in [Unit::Bytes, Unit::Items("checks")] {
            for color in [false, true] {
                for known in [false, true] {
                    let t = bar_template(unit, color, known);
                    assert!(ProgressStyle::with_template(&t).is_ok(), "{t}");
                    let bar = color && known;
                    assert_eq!(t.contains(".cyan"), bar, "{t}");
                }
            }
        }
    }

    #[test]
    fn hidden_progress_accepts_any_sequence() {
        let mut p = Progress::with_mode("x".into(), Unit::Bytes, Mode::Off);
        p.set(5, 0);
        p.set(10, 3);
        p.finish();
    }
}
