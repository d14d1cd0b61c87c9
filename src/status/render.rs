//! What the status listener says, in each of its forms: the live HTML
//! page, Prometheus's text exposition format, Apache mod_status's
//! `?auto`, JSON, and the table `pibl status` prints — all from one
//! `Report` taken of the shared counters.

use std::fmt::Write as _;

use crate::proxy::Context;
use crate::stats::{self, BUCKETS, BackendView, HISTORY, PERIOD_MS, Snapshot, State};

/// Everything the status forms show, taken at one moment.
pub struct Report {
    pub snap: Snapshot,
    pub model: &'static str,
    pub backends: Vec<BackendRow>,
    /// The cache's `max_size`, when there is a cache.
    pub cache_max: Option<u64>,
}

pub struct BackendRow {
    pub name: String,
    pub up: bool,
    pub view: BackendView,
}

const CACHE_ANSWERS: [&str; 5] = ["hit", "miss", "expired", "revalidated", "bypass"];

impl Report {
    pub fn take(ctx: &Context) -> Report {
        let balancer = &ctx.balancer;
        let now = crate::clock::now_ms();
        let backends = (0..balancer.len())
            .map(|i| BackendRow {
                name: balancer.backend(i).name.clone(),
                up: balancer.is_up(i, now),
                view: stats::backend_view(balancer.stats_slot(i)),
            })
            .collect();
        Report {
            snap: Snapshot::take(),
            model: ctx.config.model.name(),
            backends,
            cache_max: ctx.cache.as_ref().map(|_| ctx.config.cache.max_size),
        }
    }

    pub fn any_backend_up(&self) -> bool {
        self.backends.iter().any(|b| b.up)
    }

    fn uptime_secs(&self) -> u64 {
        self.snap.uptime_ms / 1000
    }

    /// Slots in each state, in `State::ALL`'s order.
    fn by_state(&self) -> Vec<(State, usize)> {
        State::ALL
            .iter()
            .map(|&s| (s, self.snap.slots.iter().filter(|v| v.state == s).count()))
            .collect()
    }

    fn busy(&self) -> usize {
        self.snap
            .slots
            .iter()
            .filter(|s| s.state != State::Idle)
            .count()
    }

    /// Requests per second over the last minute's full periods of the
    /// history (or as much of it as pibl has been up).
    fn recent_rate(&self) -> f64 {
        let full = &self.snap.history[..HISTORY - 1];
        let last: u64 = full.iter().rev().take(12).sum();
        let span_ms = (12 * PERIOD_MS).min(self.snap.uptime_ms).max(PERIOD_MS);
        last as f64 / span_ms as f64 * 1000.0
    }

    fn hit_ratio(&self) -> Option<f64> {
        let [hit, miss, expired, revalidated, _] = self.snap.cache;
        let asked = hit + miss + expired + revalidated;
        (asked > 0).then(|| (hit + revalidated) as f64 / asked as f64)
    }

    fn backend_name(&self, index: Option<usize>) -> &str {
        index
            .and_then(|i| self.backends.get(i))
            .map_or("-", |b| b.name.as_str())
    }
}

/// "1d 2h", "3h 4m", "5m 6s", "7s".
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// 1536 → "1.5 KiB".
fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn ms(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s.is_infinite() => "> 10 s".into(),
        Some(s) => format!("{:.1} ms", s * 1000.0),
    }
}

fn down_why(row: &BackendRow) -> &'static str {
    match (row.up, row.view.down_why) {
        (true, _) => "",
        (false, 2) => "active check",
        (false, _) => "passive: failures",
    }
}

fn since(row: &BackendRow) -> String {
    row.view.changed_ago_ms.map_or_else(
        || "start".into(),
        |ago| format!("{} ago", duration(ago / 1000)),
    )
}

// ------------------------------------------------------------- HTML ----

/// Escapes `text` for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:1em auto;max-width:72em;padding:0 1em;color:#222}\
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .4em}\
.sub{color:#555;margin:0}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}\
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #ddd;white-space:nowrap}\
td.num,th.num{text-align:right}.up{color:#176f2c;font-weight:600}.down{color:#b00020;font-weight:600}\
.scroll{overflow-x:auto}.cards{display:flex;flex-wrap:wrap;gap:.6em}\
.card{border:1px solid #ddd;border-radius:6px;padding:.4em .8em;min-width:8em}\
.card b{display:block;font-size:1.3em}svg{max-width:100%;height:auto}";

/// The live page: one self-contained document that reloads itself.
pub fn html(r: &Report) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"5\"><title>pibl status</title>\
         <style>{STYLE}</style></head>\n<body>\n<h1>pibl</h1>\n\
         <p class=\"sub\">{} model · up {} · {} · refreshes every 5 s</p>\n",
        r.model,
        duration(r.uptime_secs()),
        env!("CARGO_PKG_VERSION")
    );
    html_totals(&mut h, r);
    html_backends(&mut h, r);
    html_cache(&mut h, r);
    html_scoreboard(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

fn card(h: &mut String, id: &str, label: &str, value: &str) {
    let _ = write!(
        h,
        "<div class=\"card\" id=\"{id}\"><b>{}</b>{}</div>",
        esc(value),
        esc(label)
    );
}

fn html_totals(h: &mut String, r: &Report) {
    let s = &r.snap;
    h.push_str("<section id=\"totals\"><h2>Totals</h2><div class=\"cards\">");
    card(h, "requests", "requests", &s.total_requests().to_string());
    card(
        h,
        "rate",
        "requests/s, last minute",
        &format!("{:.1}", r.recent_rate()),
    );
    card(h, "connections", "connections", &s.connections.to_string());
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        card(
            h,
            &format!("status-{class}"),
            class,
            &s.requests[i].to_string(),
        );
    }
    card(h, "bytes-in", "received", &bytes(s.bytes_in));
    card(h, "bytes-out", "sent", &bytes(s.bytes_out));
    card(h, "reloads", "reloads", &s.reloads.to_string());
    card(h, "forked", "children forked", &s.forked.to_string());
    card(h, "reaped", "children reaped", &s.reaped.to_string());
    h.push_str("</div>\n");
    chart(h, &s.history);
    h.push_str("</section>\n");
}

/// The requests per second of the history as bars, oldest on the left.
fn chart(h: &mut String, history: &[u64]) {
    let (w, ht, bar) = (600, 120, 600 / HISTORY);
    let rates: Vec<f64> = history
        .iter()
        .map(|&n| n as f64 * 1000.0 / PERIOD_MS as f64)
        .collect();
    let top = rates.iter().cloned().fold(1.0, f64::max);
    let _ = write!(
        h,
        "<svg id=\"rate-chart\" viewBox=\"0 0 {w} {}\" width=\"{w}\" height=\"{}\" role=\"img\" \
         aria-label=\"requests per second, last {} minutes\">\
         <rect width=\"{w}\" height=\"{ht}\" fill=\"#f6f8fa\"/>",
        ht + 16,
        ht + 16,
        HISTORY as u64 * PERIOD_MS / 60_000
    );
    for (i, rate) in rates.iter().enumerate() {
        let bh = (rate / top * (ht - 4) as f64).round() as usize;
        let _ = write!(
            h,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bh}\" fill=\"#4c72b0\"><title>{rate:.1}/s</title></rect>",
            i * bar,
            ht - bh,
            bar - 1
        );
    }
    let _ = writeln!(
        h,
        "<text x=\"2\" y=\"{}\" font-size=\"11\">{} min ago</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">now · peak {top:.1}/s</text></svg>",
        ht + 13,
        HISTORY as u64 * PERIOD_MS / 60_000,
        w - 2,
        ht + 13
    );
}

fn html_backends(h: &mut String, r: &Report) {
    h.push_str(
        "<section id=\"backends\"><h2>Backends</h2><div class=\"scroll\"><table id=\"backend-table\">\
         <thead><tr><th>backend</th><th>state</th><th>since</th><th>why</th>\
         <th class=\"num\">active</th><th class=\"num\">requests</th><th class=\"num\">5xx</th>\
         <th class=\"num\">failures</th><th class=\"num\">mean</th><th class=\"num\">p99</th>\
         <th class=\"num\">bytes</th></tr></thead><tbody>\n",
    );
    for b in &r.backends {
        let (class, word) = if b.up { ("up", "up") } else { ("down", "down") };
        let v = &b.view;
        let _ = writeln!(
            h,
            "<tr data-backend=\"{}\"><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num requests\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td></tr>",
            esc(&b.name),
            esc(&b.name),
            since(b),
            down_why(b),
            v.active,
            v.requests,
            v.errors_5xx,
            v.failures,
            ms(v.mean()),
            ms(v.quantile(0.99)),
            bytes(v.bytes)
        );
    }
    h.push_str("</tbody></table></div></section>\n");
}

fn html_cache(h: &mut String, r: &Report) {
    let s = &r.snap;
    h.push_str("<section id=\"cache\"><h2>Cache</h2>");
    let Some(max) = r.cache_max else {
        h.push_str("<p>off (ttl 0)</p></section>\n");
        return;
    };
    h.push_str("<div class=\"cards\">");
    card(h, "cache-entries", "entries", &s.cache_entries.to_string());
    let size = format!("{} of {}", bytes(s.cache_bytes), bytes(max));
    card(h, "cache-bytes", "stored", &size);
    for (i, name) in CACHE_ANSWERS.iter().enumerate() {
        card(h, &format!("cache-{name}"), name, &s.cache[i].to_string());
    }
    let ratio = r
        .hit_ratio()
        .map_or("-".into(), |x| format!("{:.1} %", x * 100.0));
    card(h, "cache-ratio", "hit ratio", &ratio);
    h.push_str("</div></section>\n");
}

fn html_scoreboard(h: &mut String, r: &Report) {
    h.push_str("<section id=\"scoreboard\"><h2>Scoreboard</h2><p>");
    let counts: Vec<String> = r
        .by_state()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {}", s.name()))
        .collect();
    let summary = if counts.is_empty() {
        "nothing being served".to_string()
    } else {
        counts.join(" · ")
    };
    let _ = writeln!(
        h,
        "{}</p><div class=\"scroll\"><table id=\"scoreboard-table\"><thead><tr><th>pid</th>\
         <th>thread</th><th>state</th><th class=\"num\">seconds</th><th>client</th><th>request</th>\
         <th>backend</th><th class=\"num\">requests</th></tr></thead><tbody>",
        esc(&summary)
    );
    for s in &r.snap.slots {
        let thread = if s.thread == 0 {
            "-".to_string()
        } else {
            s.thread.to_string()
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{thread}</td><td class=\"state\">{}</td><td class=\"num\">{:.1}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            s.pid,
            s.state.name(),
            s.seconds,
            esc(&s.client),
            esc(&s.request),
            esc(r.backend_name(s.backend)),
            s.requests
        );
    }
    h.push_str("</tbody></table></div></section>\n");
}

// ------------------------------------------------------- Prometheus ----

/// A label value, escaped as the exposition format asks.
fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(m: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Prometheus's text exposition format (version 0.0.4).
pub fn metrics(r: &Report) -> String {
    let s = &r.snap;
    let mut m = String::with_capacity(8 * 1024);
    family(
        &mut m,
        "pibl_start_time_seconds",
        "gauge",
        "When pibl started, in Unix seconds.",
    );
    let _ = writeln!(m, "pibl_start_time_seconds {}", s.started_unix);
    family(
        &mut m,
        "pibl_connections_total",
        "counter",
        "Client connections accepted.",
    );
    let _ = writeln!(m, "pibl_connections_total {}", s.connections);
    family(
        &mut m,
        "pibl_requests_total",
        "counter",
        "Requests answered, by status class.",
    );
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        let _ = writeln!(
            m,
            "pibl_requests_total{{code=\"{class}\"}} {}",
            s.requests[i]
        );
    }
    family(
        &mut m,
        "pibl_received_bytes_total",
        "counter",
        "Request body bytes received from clients.",
    );
    let _ = writeln!(m, "pibl_received_bytes_total {}", s.bytes_in);
    family(
        &mut m,
        "pibl_sent_bytes_total",
        "counter",
        "Response body bytes sent to clients.",
    );
    let _ = writeln!(m, "pibl_sent_bytes_total {}", s.bytes_out);
    family(
        &mut m,
        "pibl_reloads_total",
        "counter",
        "Configuration reloads.",
    );
    let _ = writeln!(m, "pibl_reloads_total {}", s.reloads);
    family(
        &mut m,
        "pibl_children_forked_total",
        "counter",
        "Processes forked to serve connections.",
    );
    let _ = writeln!(m, "pibl_children_forked_total {}", s.forked);
    family(
        &mut m,
        "pibl_children_reaped_total",
        "counter",
        "Processes that served connections, reaped.",
    );
    let _ = writeln!(m, "pibl_children_reaped_total {}", s.reaped);
    family(
        &mut m,
        "pibl_workers",
        "gauge",
        "Processes or threads serving, by state.",
    );
    for (state, n) in r.by_state() {
        let _ = writeln!(m, "pibl_workers{{state=\"{}\"}} {n}", state.name());
    }
    backend_metrics(&mut m, r);
    cache_metrics(&mut m, r);
    m
}

/// One sample per backend: a family's name, type, help, and its value.
type PerBackend = (
    &'static str,
    &'static str,
    &'static str,
    fn(&BackendRow) -> String,
);

const PER_BACKEND: [PerBackend; 6] = [
    (
        "pibl_backend_up",
        "gauge",
        "1 when the backend is in the rotation, 0 when down.",
        |b| u8::from(b.up).to_string(),
    ),
    (
        "pibl_backend_active",
        "gauge",
        "Requests in flight to the backend.",
        |b| b.view.active.to_string(),
    ),
    (
        "pibl_backend_requests_total",
        "counter",
        "Responses received from the backend.",
        |b| b.view.requests.to_string(),
    ),
    (
        "pibl_backend_responses_5xx_total",
        "counter",
        "5xx responses from the backend.",
        |b| b.view.errors_5xx.to_string(),
    ),
    (
        "pibl_backend_failures_total",
        "counter",
        "Failed attempts: no connection or no response.",
        |b| b.view.failures.to_string(),
    ),
    (
        "pibl_backend_received_bytes_total",
        "counter",
        "Response body bytes relayed from the backend.",
        |b| b.view.bytes.to_string(),
    ),
];

fn backend_metrics(m: &mut String, r: &Report) {
    for (name, kind, help, value) in PER_BACKEND {
        family(m, name, kind, help);
        for b in &r.backends {
            let _ = writeln!(m, "{name}{{backend=\"{}\"}} {}", label(&b.name), value(b));
        }
    }
    let name = "pibl_backend_response_seconds";
    family(
        m,
        name,
        "histogram",
        "Time from sending a request to the backend to its response head.",
    );
    for b in &r.backends {
        let backend = label(&b.name);
        let mut cumulative = 0;
        for (i, n) in b.view.buckets.iter().enumerate() {
            cumulative += n;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |v| v.to_string());
            let _ = writeln!(
                m,
                "{name}_bucket{{backend=\"{backend}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = b.view.latency_us as f64 / 1e6;
        let _ = writeln!(m, "{name}_sum{{backend=\"{backend}\"}} {sum}");
        let _ = writeln!(m, "{name}_count{{backend=\"{backend}\"}} {cumulative}");
    }
}

fn cache_metrics(m: &mut String, r: &Report) {
    let Some(max) = r.cache_max else { return };
    let s = &r.snap;
    family(
        m,
        "pibl_cache_requests_total",
        "counter",
        "Requests by what the cache did (X-Cache).",
    );
    for (i, name) in CACHE_ANSWERS.iter().enumerate() {
        let _ = writeln!(
            m,
            "pibl_cache_requests_total{{result=\"{name}\"}} {}",
            s.cache[i]
        );
    }
    family(
        m,
        "pibl_cache_entries",
        "gauge",
        "Files in the cache, as its janitor last counted.",
    );
    let _ = writeln!(m, "pibl_cache_entries {}", s.cache_entries);
    family(
        m,
        "pibl_cache_size_bytes",
        "gauge",
        "Bytes in the cache, as its janitor last counted.",
    );
    let _ = writeln!(m, "pibl_cache_size_bytes {}", s.cache_bytes);
    family(
        m,
        "pibl_cache_max_size_bytes",
        "gauge",
        "The cache's max_size.",
    );
    let _ = writeln!(m, "pibl_cache_max_size_bytes {max}");
}

// ----------------------------------------------------------- Apache ----

/// mod_status's machine-readable form (`?auto`).
pub fn auto(r: &Report) -> String {
    let s = &r.snap;
    let up = r.uptime_secs().max(1);
    let total = s.total_requests();
    let per_req = if total > 0 {
        s.bytes_out as f64 / total as f64
    } else {
        0.0
    };
    let board: String = r.snap.slots.iter().map(|v| v.state.letter()).collect();
    format!(
        "ServerVersion: pibl/{}\nServerMPM: {}\nServerUptimeSeconds: {}\nUptime: {}\n\
         Total Accesses: {total}\nTotal kBytes: {}\nReqPerSec: {:.6}\nBytesPerSec: {:.6}\n\
         BytesPerReq: {per_req:.6}\nBusyWorkers: {}\nIdleWorkers: {}\nScoreboard: {board}\n",
        env!("CARGO_PKG_VERSION"),
        r.model,
        r.uptime_secs(),
        r.uptime_secs(),
        s.bytes_out / 1024,
        total as f64 / up as f64,
        s.bytes_out as f64 / up as f64,
        r.busy(),
        r.snap.slots.len() - r.busy(),
    )
}

// ------------------------------------------------------------- JSON ----

/// `text` as a JSON string.
fn js(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x}"),
        _ => "null".into(),
    }
}

/// Everything on the page, as JSON.
pub fn json(r: &Report) -> String {
    let s = &r.snap;
    let mut j = String::with_capacity(8 * 1024);
    let _ = write!(
        j,
        "{{\"version\":{},\"model\":{},\"uptime_seconds\":{},\"connections\":{},\
         \"requests\":{{\"total\":{},\"1xx\":{},\"2xx\":{},\"3xx\":{},\"4xx\":{},\"5xx\":{}}},\
         \"requests_per_second\":{},\"bytes_in\":{},\"bytes_out\":{},\"reloads\":{},\
         \"children_forked\":{},\"children_reaped\":{},\"history\":{{\"period_seconds\":{},\"requests\":{:?}}},",
        js(env!("CARGO_PKG_VERSION")),
        js(r.model),
        r.uptime_secs(),
        s.connections,
        s.total_requests(),
        s.requests[0],
        s.requests[1],
        s.requests[2],
        s.requests[3],
        s.requests[4],
        num(Some(r.recent_rate())),
        s.bytes_in,
        s.bytes_out,
        s.reloads,
        s.forked,
        s.reaped,
        PERIOD_MS / 1000,
        s.history
    );
    j.push_str("\"backends\":[");
    for (i, b) in r.backends.iter().enumerate() {
        let v = &b.view;
        let _ = write!(
            j,
            "{}{{\"name\":{},\"up\":{},\"changed_seconds_ago\":{},\"down_because\":{},\"active\":{},\
             \"requests\":{},\"responses_5xx\":{},\"failures\":{},\"bytes\":{},\
             \"latency_mean_seconds\":{},\"latency_p99_seconds\":{},\"histogram\":{{\"le\":{:?},\"counts\":{:?}}}}}",
            if i > 0 { "," } else { "" },
            js(&b.name),
            b.up,
            num(v.changed_ago_ms.map(|ms| ms as f64 / 1000.0)),
            js(down_why(b)),
            v.active,
            v.requests,
            v.errors_5xx,
            v.failures,
            v.bytes,
            num(v.mean()),
            num(v.quantile(0.99)),
            BUCKETS,
            v.buckets
        );
    }
    j.push_str("],\"cache\":");
    match r.cache_max {
        None => j.push_str("null"),
        Some(max) => {
            let _ = write!(
                j,
                "{{\"entries\":{},\"bytes\":{},\"max_size\":{max},\"hit\":{},\"miss\":{},\
                 \"expired\":{},\"revalidated\":{},\"bypass\":{},\"hit_ratio\":{}}}",
                s.cache_entries,
                s.cache_bytes,
                s.cache[0],
                s.cache[1],
                s.cache[2],
                s.cache[3],
                s.cache[4],
                num(r.hit_ratio())
            );
        }
    }
    j.push_str(",\"scoreboard\":[");
    for (i, v) in s.slots.iter().enumerate() {
        let _ = write!(
            j,
            "{}{{\"pid\":{},\"thread\":{},\"state\":{},\"seconds\":{},\"client\":{},\
             \"request\":{},\"backend\":{},\"requests\":{}}}",
            if i > 0 { "," } else { "" },
            v.pid,
            v.thread,
            js(v.state.name()),
            v.seconds,
            js(&v.client),
            js(&v.request),
            match v.backend {
                Some(_) => js(r.backend_name(v.backend)),
                None => "null".into(),
            },
            v.requests
        );
    }
    j.push_str("]}\n");
    j
}

// ------------------------------------------------------------- text ----

/// The page as a table for a terminal (`pibl status`).
pub fn text(r: &Report) -> String {
    let s = &r.snap;
    let mut t = String::with_capacity(4 * 1024);
    let _ = writeln!(
        t,
        "pibl {}, {} model, up {}\n{} requests ({:.1}/s lately), {} connections; 2xx {} 3xx {} 4xx {} 5xx {}; \
         sent {}, received {}\nreloads {}, children forked {}, reaped {}\n",
        env!("CARGO_PKG_VERSION"),
        r.model,
        duration(r.uptime_secs()),
        s.total_requests(),
        r.recent_rate(),
        s.connections,
        s.requests[1],
        s.requests[2],
        s.requests[3],
        s.requests[4],
        bytes(s.bytes_out),
        bytes(s.bytes_in),
        s.reloads,
        s.forked,
        s.reaped
    );
    let _ = writeln!(
        t,
        "{:<24} {:<5} {:>7} {:>9} {:>6} {:>8} {:>10} {:>10}  WHY",
        "BACKEND", "STATE", "ACTIVE", "REQUESTS", "5XX", "FAILURES", "MEAN", "P99"
    );
    for b in &r.backends {
        let v = &b.view;
        let _ = writeln!(
            t,
            "{:<24} {:<5} {:>7} {:>9} {:>6} {:>8} {:>10} {:>10}  {}",
            b.name,
            if b.up { "up" } else { "down" },
            v.active,
            v.requests,
            v.errors_5xx,
            v.failures,
            ms(v.mean()),
            ms(v.quantile(0.99)),
            down_why(b)
        );
    }
    if let Some(max) = r.cache_max {
        let ratio = r
            .hit_ratio()
            .map_or("-".into(), |x| format!("{:.1} %", x * 100.0));
        let _ = writeln!(
            t,
            "\ncache: {} entries, {} of {}; hit {} miss {} expired {} revalidated {} bypass {}; hit ratio {ratio}",
            s.cache_entries,
            bytes(s.cache_bytes),
            bytes(max),
            s.cache[0],
            s.cache[1],
            s.cache[2],
            s.cache[3],
            s.cache[4]
        );
    }
    let _ = writeln!(
        t,
        "\n{:>8} {:>6} {:<20} {:>8} {:<24} {:<20} {:>4}  REQUEST",
        "PID", "THREAD", "STATE", "SECONDS", "CLIENT", "BACKEND", "REQS"
    );
    for v in &s.slots {
        let _ = writeln!(
            t,
            "{:>8} {:>6} {:<20} {:>8.1} {:<24} {:<20} {:>4}  {}",
            v.pid,
            v.thread,
            v.state.name(),
            v.seconds,
            v.client,
            r.backend_name(v.backend),
            v.requests,
            v.request
        );
    }
    t
}
