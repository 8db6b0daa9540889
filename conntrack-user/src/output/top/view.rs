//! `ct-trace top` on a terminal: a full-screen view (ratatui) of the snapshots `node::top`
//! takes, refreshed every interval, with keys to switch the grouping and the sort order.
//! Snapshots are taken on a thread of their own, so keys answer while a large table is read.

use std::{
    io,
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::Duration,
};

use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Gauge, Paragraph, Row, Table},
    DefaultTerminal, Frame,
};

use crate::node::{
    caused::{self, Reader},
    top::{Group, Grouping, Sampler, Snapshot, ALERT_FILL},
};

/// How rows are ordered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sort {
    Entries,
    New,
    Key,
}

struct View {
    grouping: Grouping,
    sort: Sort,
    last: Option<Snapshot>,
    error: Option<String>,
}

const HELP: &str =
    "s service  b backend  c client  t state  tab next   e entries  n new  k key   q quit";

/// Runs the view until `q`, Esc or Ctrl-C; the terminal is restored whatever happens.
pub fn run(mut sampler: Sampler, mut resets: Option<Reader>, interval: Duration) -> io::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<Result<Snapshot, String>>(1);
    std::thread::spawn(move || loop {
        let s = match sampler.pass(interval, super::stop::stopped) {
            Ok(true) => sampler.sample(),
            Ok(false) => return,
            Err(e) => Err(e),
        };
        let s = s.map(|mut s| {
            // Every caused group, whatever the screen shows: the RST column looks them up.
            s.resets = resets.as_mut().map(|r| r.snapshot(usize::MAX));
            s
        });
        let s = s.map_err(|e| e.to_string());
        if tx.send(s).is_err() {
            return;
        }
    });
    let mut terminal = ratatui::try_init()?;
    let r = event_loop(&mut terminal, &rx);
    ratatui::restore();
    r
}

fn event_loop(
    terminal: &mut DefaultTerminal,
    rx: &Receiver<Result<Snapshot, String>>,
) -> io::Result<()> {
    let mut v = View {
        grouping: Grouping::Service,
        sort: Sort::Entries,
        last: None,
        error: None,
    };
    loop {
        if super::stop::stopped() {
            return Ok(());
        }
        terminal.draw(|f| draw(f, &v))?;
        // Keys first (answered within 50 ms), then a snapshot if one came.
        if event::poll(Duration::from_millis(50))? {
            if let Event::Key(k) = event::read()? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                match k.code {
                    _ if ctrl_c => return Ok(()),
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('s') => v.grouping = Grouping::Service,
                    KeyCode::Char('b') => v.grouping = Grouping::Backend,
                    KeyCode::Char('c') => v.grouping = Grouping::Client,
                    KeyCode::Char('t') => v.grouping = Grouping::State,
                    KeyCode::Tab => v.grouping = next(v.grouping),
                    KeyCode::Char('e') => v.sort = Sort::Entries,
                    KeyCode::Char('n') => v.sort = Sort::New,
                    KeyCode::Char('k') => v.sort = Sort::Key,
                    _ => {}
                }
            }
        }
        match rx.recv_timeout(Duration::from_millis(1)) {
            Ok(Ok(s)) => {
                v.last = Some(s);
                v.error = None;
            }
            Ok(Err(e)) => v.error = Some(e),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if super::stop::stopped() => return Ok(()),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("the table reader stopped"))
            }
        }
    }
}

fn next(g: Grouping) -> Grouping {
    match g {
        Grouping::Service => Grouping::Backend,
        Grouping::Backend => Grouping::Client,
        Grouping::Client => Grouping::State,
        Grouping::State => Grouping::Service,
    }
}

fn title(g: Grouping) -> &'static str {
    match g {
        Grouping::Service => "SERVICE",
        Grouping::Backend => "BACKEND",
        Grouping::Client => "CLIENT",
        Grouping::State => "STATE",
    }
}

fn rows(s: &Snapshot, g: Grouping) -> &[Group] {
    match g {
        Grouping::Service => &s.by_service,
        Grouping::Backend => &s.by_backend,
        Grouping::Client => &s.by_client,
        Grouping::State => &s.by_state,
    }
}

fn rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{r:.1}/s"))
}

/// The caused resets of the grouping's groups, by key (none for the state grouping).
fn reset_rows(s: &Snapshot, g: Grouping) -> Option<&[caused::Group]> {
    let r = s.resets.as_ref()?;
    Some(match g {
        Grouping::Service => &r.by_service,
        Grouping::Backend => &r.by_backend,
        Grouping::Client => &r.by_client,
        Grouping::State => return None,
    })
}

/// The resets part of the rates line.
fn resets_text(s: &Snapshot) -> String {
    match &s.resets {
        None => String::new(),
        Some(r) => match r.state {
            caused::State::Starting => "  resets caused: attaching".into(),
            caused::State::Failed if r.caused == 0 => format!(
                "  resets caused: unknown ({})",
                r.error.as_deref().unwrap_or("the tracer failed")
            ),
            _ => format!(
                "  resets caused {:.1}/s ({} since start{})",
                r.per_s,
                r.caused,
                if r.unseen > 0 { ", some lost" } else { "" }
            ),
        },
    }
}

fn draw(f: &mut Frame, v: &View) {
    let [head, gauge, rates, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(HELP), foot);
    let Some(s) = &v.last else {
        f.render_widget(
            Paragraph::new(
                v.error
                    .clone()
                    .unwrap_or_else(|| "ct-trace top: reading the conntrack table...".into()),
            ),
            head,
        );
        return;
    };
    let max = s.max.map_or("?".into(), |m| m.to_string());
    let mut headline = format!(
        "ct-trace top  netns {}  {} / {max} entries  high at {:.0}%",
        s.netns,
        s.entries,
        ALERT_FILL * 100.0
    );
    if let Some(m) = s.ram_max {
        headline += &format!("  write-ups' size for this RAM {m}");
    }
    if let Some(e) = &v.error {
        headline += &format!("  (last read failed: {e})");
    }
    f.render_widget(Paragraph::new(headline), head);
    let fill = s.fill.unwrap_or(0.0).clamp(0.0, 1.0);
    f.render_widget(
        Gauge::default()
            .ratio(fill)
            .label(format!("{:.1}% full", fill * 100.0)),
        gauge,
    );
    f.render_widget(
        Paragraph::new(format!(
            "new {}  invalid {}  drop {}  early_drop {}  insert_failed {}{}  (over {:.1} s; dump {:.0} ms of CPU; resyncs {})",
            rate(Some(s.per_s.new)),
            rate(s.per_s.invalid),
            rate(s.per_s.drop),
            rate(s.per_s.early_drop),
            rate(s.per_s.insert_failed),
            resets_text(s),
            s.interval_s,
            s.dump_cpu_ms,
            s.resyncs
        )),
        rates,
    );
    let mut shown: Vec<&Group> = rows(s, v.grouping).iter().collect();
    match v.sort {
        Sort::Entries => {}
        Sort::New => shown.sort_by(|a, b| b.new.cmp(&a.new).then(b.entries.cmp(&a.entries))),
        Sort::Key => shown.sort_by(|a, b| a.key.cmp(&b.key)),
    }
    let sort = match v.sort {
        Sort::Entries => "entries",
        Sort::New => "new",
        Sort::Key => "key",
    };
    let caused = reset_rows(s, v.grouping);
    let rst = |key: &str| match caused {
        // `other` of the table and `other` of the resets are different sets of keys.
        None => "-".to_string(),
        Some(_) if key == "other" => "-".to_string(),
        Some(rows) => rows
            .iter()
            .find(|r| r.key == key)
            .map_or(0, |r| r.resets)
            .to_string(),
    };
    let table = Table::new(
        shown.iter().map(|g| {
            Row::new([
                g.key.clone(),
                g.entries.to_string(),
                g.new.to_string(),
                rst(&g.key),
                g.name.clone().unwrap_or_default(),
            ])
        }),
        [
            Constraint::Length(44),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new([title(v.grouping), "ENTRIES", "NEW", "RST", "NAME"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(Block::bordered().title(Line::from(format!(
        " by {}, sorted by {sort} ({} groups) ",
        title(v.grouping).to_lowercase(),
        s.groups.get(&v.grouping).copied().unwrap_or(0)
    ))));
    f.render_widget(table, body);
}
