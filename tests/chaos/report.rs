//! The report a person reads after a failure: one HTML file with an SVG timeline (a lane
//! per client, one bar per operation, faults as bands) and the full history of every key
//! with an anomaly; plus the whole history as plain text next to it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::client::{Api, Event, Outcome};
use super::nemesis::FaultRecord;

/// What the report shows.
pub struct Run<'a> {
    /// The run's seed.
    pub seed: u64,
    /// Its node count.
    pub nodes: usize,
    /// The other variables a replay needs (`NAME=value ...`).
    pub replay_env: String,
    /// Every operation.
    pub history: &'a [Event],
    /// Every fault.
    pub timeline: &'a [FaultRecord],
    /// The anomalies, with their key.
    pub anomalies: &'a [(Option<u64>, String)],
    /// The nodes' stderr files.
    pub logs: &'a [PathBuf],
    /// What went over gRPC (operations by outcome, watch events), for people.
    pub grpc_summary: String,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn describe(event: &Event) -> String {
    let api = match event.api {
        Api::Http => "http",
        Api::Grpc => "grpc",
    };
    format!(
        "k{} on n{} ({api}): {:?} -> {:?} [{}] ({:.3}..{:.3} s)",
        event.key,
        event.node + 1,
        event.request,
        event.outcome,
        event.detail,
        event.invoke as f64 / 1e6,
        event.complete as f64 / 1e6
    )
}

/// Writes `<dir>/chaos-seed-<seed>.html` and `.history.txt`; returns the HTML path.
pub fn write(dir: &Path, run: &Run) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let html_path = dir.join(format!("chaos-seed-{}.html", run.seed));
    let text_path = dir.join(format!("chaos-seed-{}.history.txt", run.seed));

    let mut text = format!("{}\n", run.grpc_summary);
    for fault in run.timeline {
        let _ = writeln!(
            text,
            "fault {:.3}..{:.3} s: {}",
            fault.start as f64 / 1e6,
            fault.end as f64 / 1e6,
            fault.description
        );
    }
    let mut sorted: Vec<&Event> = run.history.iter().collect();
    sorted.sort_by_key(|e| (e.key, e.invoke));
    for event in &sorted {
        let client =
            if event.client == usize::MAX { "final".to_owned() } else { format!("c{}", event.client) };
        let _ = writeln!(text, "{client} {}", describe(event));
    }
    std::fs::write(&text_path, text)?;

    let end = run
        .history
        .iter()
        .map(|e| e.complete)
        .chain(run.timeline.iter().map(|f| f.end))
        .max()
        .unwrap_or(1)
        .max(1);
    let clients =
        run.history.iter().filter(|e| e.client != usize::MAX).map(|e| e.client + 1).max().unwrap_or(0) + 1;
    let width = 1800.0;
    let lane = 18.0;
    let top = 30.0 + 16.0 * run.timeline.len().min(1) as f64;
    let height = top + lane * (clients as f64 + 1.0) + 20.0;
    let x = |t: u64| 60.0 + (width - 80.0) * t as f64 / end as f64;
    let bad_keys: Vec<u64> = run.anomalies.iter().filter_map(|(k, _)| *k).collect();

    let mut svg = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='monospace' font-size='11'>");
    for fault in run.timeline.iter().filter(|f| f.end == f.start) {
        // A moment (an admin snapshot, a forged message): a thin line, no label.
        let _ = write!(
            svg,
            "<rect x='{:.1}' y='0' width='1' height='{height}' fill='#a6f'><title>{}</title></rect>",
            x(fault.start),
            escape(&fault.description),
        );
    }
    for fault in run.timeline.iter().filter(|f| f.end > f.start) {
        let _ = write!(
            svg,
            "<rect x='{:.1}' y='0' width='{:.1}' height='{height}' fill='#fdd' opacity='0.6'><title>{}</title></rect><text x='{:.1}' y='12'>{}</text>",
            x(fault.start),
            (x(fault.end) - x(fault.start)).max(1.0),
            escape(&fault.description),
            x(fault.start) + 2.0,
            escape(fault.description.split(' ').next().unwrap_or("")),
        );
    }
    for second in 0..=end / 1_000_000 {
        let _ = write!(
            svg,
            "<text x='{:.1}' y='{:.1}' fill='#888'>{second}s</text>",
            x(second * 1_000_000),
            height - 4.0
        );
    }
    for c in 0..clients {
        let label = if c + 1 == clients { "final".to_owned() } else { format!("c{c}") };
        let _ = write!(svg, "<text x='4' y='{:.1}'>{label}</text>", top + lane * c as f64 + 12.0);
    }
    for event in run.history {
        let lane_index = if event.client == usize::MAX { clients - 1 } else { event.client };
        let color = match event.outcome {
            Outcome::Read(_) => "#69c",
            Outcome::Ok => "#4a4",
            Outcome::Rejected => "#aaa",
            Outcome::Failed => "#c44",
            Outcome::Unknown => "#e90",
        };
        let stroke = if bad_keys.contains(&event.key) { " stroke='black' stroke-width='1.5'" } else { "" };
        let _ = write!(
            svg,
            "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='{color}'{stroke}><title>{}</title></rect>",
            x(event.invoke),
            top + lane * lane_index as f64 + 2.0,
            (x(event.complete) - x(event.invoke)).max(1.0),
            lane - 4.0,
            escape(&describe(event)),
        );
    }
    svg.push_str("</svg>");

    let mut html = format!(
        "<!doctype html><meta charset='utf-8'><title>mmapd chaos seed {seed}</title><body style='font-family:sans-serif'>\
         <h1>mmapd chaos: seed {seed}, {nodes} nodes</h1>\
         <p>Replay the schedule: <code>MMAPD_CHAOS_SEED={seed} MMAPD_CHAOS_NODES={nodes} {env} cargo test --release --test chaos</code></p>\
         <p>{grpc}</p>\
         <p>Bars: blue read, green acknowledged, grey 412/404, red failed, orange unknown; black outline: a key with an anomaly; \
         red bands: faults, purple lines: admin snapshots and forged messages (hover for details). Full history: <code>{text}</code></p><h2>Anomalies</h2><ul>",
        seed = run.seed,
        nodes = run.nodes,
        env = escape(&run.replay_env),
        grpc = escape(&run.grpc_summary),
        text = text_path.display()
    );
    for (_, anomaly) in run.anomalies {
        let _ = write!(html, "<li style='white-space:pre-wrap'>{}</li>", escape(anomaly));
    }
    html.push_str("</ul><h2>Node logs</h2><ul>");
    for log in run.logs {
        let _ = write!(html, "<li><code>{}</code></li>", escape(&log.display().to_string()));
    }
    let _ = write!(html, "</ul><h2>Timeline</h2><div style='overflow-x:auto'>{svg}</div><h2>Faults</h2><ol>");
    for fault in run.timeline {
        let _ = write!(
            html,
            "<li>{:.3}..{:.3} s: {}</li>",
            fault.start as f64 / 1e6,
            fault.end as f64 / 1e6,
            escape(&fault.description)
        );
    }
    html.push_str("</ol>");
    let mut shown = bad_keys.clone();
    shown.dedup();
    for key in shown {
        let _ = write!(html, "<h2>History of k{key}</h2><pre>");
        for event in sorted.iter().filter(|e| e.key == key) {
            let client =
                if event.client == usize::MAX { "final".to_owned() } else { format!("c{}", event.client) };
            let _ = writeln!(html, "{client:>5} {}", escape(&describe(event)));
        }
        html.push_str("</pre>");
    }
    std::fs::write(&html_path, html)?;
    Ok(html_path)
}
