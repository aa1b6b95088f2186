//! db_bench's result lines: per-thread stats, merging, formatting, and a parser that
//! reads the output of both `db_bench` and `nokv-bench dbbench`.

use std::time::{Duration, Instant};

/// What one benchmark thread measured (db_bench's `Stats`).
#[derive(Debug, Clone)]
pub struct ThreadStats {
    /// When the thread started its operations.
    pub start: Instant,
    /// When the thread finished its operations.
    pub finish: Instant,
    /// Operations done.
    pub done: u64,
    /// Bytes moved (keys plus values), for the MB/s column.
    pub bytes: u64,
    /// Free-form message appended to the result line.
    pub message: String,
}

impl ThreadStats {
    /// Starts a clock for a thread.
    pub fn start() -> Self {
        let now = Instant::now();
        ThreadStats {
            start: now,
            finish: now,
            done: 0,
            bytes: 0,
            message: String::new(),
        }
    }

    /// Stops the clock.
    pub fn stop(&mut self) {
        self.finish = Instant::now();
    }
}

/// Stats of all threads of one benchmark, merged the way db_bench merges them.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedStats {
    /// Wall time from the earliest thread start to the latest finish, in seconds.
    pub elapsed: f64,
    /// Sum of the per-thread running times, in seconds (db_bench's `seconds_`).
    pub thread_seconds: f64,
    /// Operations done by all threads.
    pub done: u64,
    /// Bytes moved by all threads.
    pub bytes: u64,
    /// The message of the first thread that had one.
    pub message: String,
}

impl MergedStats {
    /// Merges per-thread stats: min start, max finish, summed counters, first message.
    pub fn merge(threads: &[ThreadStats]) -> Self {
        let start = threads.iter().map(|t| t.start).min();
        let finish = threads.iter().map(|t| t.finish).max();
        let elapsed = match (start, finish) {
            (Some(s), Some(f)) => f.saturating_duration_since(s).as_secs_f64(),
            _ => 0.0,
        };
        MergedStats {
            elapsed,
            thread_seconds: threads
                .iter()
                .map(|t| t.finish.saturating_duration_since(t.start).as_secs_f64())
                .sum(),
            done: threads.iter().map(|t| t.done).sum(),
            bytes: threads.iter().map(|t| t.bytes).sum(),
            message: threads
                .iter()
                .map(|t| t.message.as_str())
                .find(|m| !m.is_empty())
                .unwrap_or("")
                .to_string(),
        }
    }

    /// Adds a period every thread had to wait for (flush + compaction settling).
    pub fn add_settle(&mut self, settle: Duration, threads: usize) {
        let s = settle.as_secs_f64();
        self.elapsed += s;
        self.thread_seconds += s * threads as f64;
    }

    /// Formats db_bench's result line (`Stats::Report`), without the trailing newline.
    pub fn result_line(&self, name: &str) -> String {
        let done = self.done.max(1);
        // Avoid dividing by zero on absurdly fast runs, like db_bench's clock granularity.
        let elapsed = if self.elapsed > 0.0 {
            self.elapsed
        } else {
            1e-6
        };
        let mut extra = String::new();
        if self.bytes > 0 {
            extra = format!("{:6.1} MB/s", (self.bytes as f64 / 1048576.0) / elapsed);
        }
        if !self.message.is_empty() {
            if !extra.is_empty() {
                extra.push(' ');
            }
            extra.push_str(&self.message);
        }
        let throughput = (done as f64 / elapsed) as i64;
        format!(
            "{:<12} : {:11.3} micros/op {} ops/sec {:.3} seconds {} operations;{}{}",
            name,
            self.thread_seconds * 1e6 / done as f64,
            throughput,
            elapsed,
            done,
            if extra.is_empty() { "" } else { " " },
            extra
        )
    }
}

/// One parsed result line.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultLine {
    /// Benchmark name.
    pub name: String,
    /// Microseconds per operation (summed thread time / operations).
    pub micros_per_op: f64,
    /// Operations per second over the wall time.
    pub ops_per_sec: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Operations done.
    pub operations: u64,
    /// MB/s, when the line has it.
    pub mb_per_sec: Option<f64>,
    /// `(found, tried)` from `(X of Y found)`, when the line has it.
    pub found: Option<(u64, u64)>,
}

/// Parses `name : X micros/op N ops/sec S seconds K operations; ...`; None for other lines.
pub fn parse_result_line(line: &str) -> Option<ResultLine> {
    let (name, rest) = line.split_once(" : ")?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let (head, tail) = rest.split_once(';').unwrap_or((rest, ""));
    let f: Vec<&str> = head.split_whitespace().collect();
    if f.len() != 8
        || f[1] != "micros/op"
        || f[3] != "ops/sec"
        || f[5] != "seconds"
        || f[7] != "operations"
    {
        return None;
    }
    let tail_words: Vec<&str> = tail.split_whitespace().collect();
    let mb_per_sec = match tail_words.as_slice() {
        [v, "MB/s", ..] => v.parse().ok(),
        _ => None,
    };
    let found = tail.find('(').and_then(|i| {
        let inner = tail[i + 1..].split(')').next()?;
        let w: Vec<&str> = inner.split_whitespace().collect();
        match w.as_slice() {
            [x, "of", y, "found"] => Some((x.parse().ok()?, y.parse().ok()?)),
            _ => None,
        }
    });
    Some(ResultLine {
        name: name.to_string(),
        micros_per_op: f[0].parse().ok()?,
        ops_per_sec: f[2].parse().ok()?,
        seconds: f[4].parse().ok()?,
        operations: f[6].parse().ok()?,
        mb_per_sec,
        found,
    })
}

/// Everything the anchor script needs from one tool's output (stdout plus `time -v`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedOutput {
    /// Result lines in order.
    pub results: Vec<ResultLine>,
    /// Write amplification: NoKV's per-benchmark lines, or RocksDB's STATISTICS counters.
    pub write_amp: Vec<(String, f64)>,
    /// NoKV settle lines: (benchmark, seconds, ops/sec without settling).
    pub settle: Vec<(String, f64, u64)>,
    /// Peak RSS in KiB: `time -v`'s maximum resident set size, else NoKV's VmHWM line.
    pub peak_rss_kib: Option<u64>,
}

/// Prefix of the settle line printed after fill benchmarks.
pub const SETTLE_PREFIX: &str = "settle       : ";
/// Prefix of the write amplification line printed after write benchmarks.
pub const WRITE_AMP_PREFIX: &str = "write-amp    : ";
/// Prefix of the peak RSS line printed at exit.
pub const PEAK_RSS_PREFIX: &str = "peak RSS     : ";

fn stat_counter(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?.trim_start();
    let rest = rest.strip_prefix("COUNT :")?;
    rest.trim().parse().ok()
}

/// Parses the combined text of one run.
pub fn parse_output(text: &str) -> ParsedOutput {
    let mut out = ParsedOutput::default();
    let (mut user, mut flush, mut compact) = (None, None, None);
    let mut time_rss = None;
    let mut hwm = None;
    for line in text.lines() {
        if let Some(r) = parse_result_line(line) {
            out.results.push(r);
        } else if let Some(rest) = line.strip_prefix(SETTLE_PREFIX) {
            // "<name> <secs> seconds ...; <ops> ops/sec without it"
            let w: Vec<&str> = rest.split_whitespace().collect();
            if w.len() >= 2 {
                let ops = w
                    .windows(2)
                    .find(|p| p[1] == "ops/sec")
                    .and_then(|p| p[0].parse().ok());
                if let (Ok(secs), Some(ops)) = (w[1].parse(), ops) {
                    out.settle.push((w[0].to_string(), secs, ops));
                }
            }
        } else if let Some(rest) = line.strip_prefix(WRITE_AMP_PREFIX) {
            let w: Vec<&str> = rest.split_whitespace().collect();
            if let [name, v, ..] = w.as_slice() {
                if let Ok(v) = v.parse() {
                    out.write_amp.push((name.to_string(), v));
                }
            }
        } else if let Some(rest) = line.strip_prefix(PEAK_RSS_PREFIX) {
            hwm = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if let Some(rest) = line
            .trim_start()
            .strip_prefix("Maximum resident set size (kbytes):")
        {
            time_rss = rest.trim().parse().ok();
        } else if let Some(v) = stat_counter(line, "rocksdb.bytes.written") {
            user = Some(v);
        } else if let Some(v) = stat_counter(line, "rocksdb.flush.write.bytes") {
            flush = Some(v);
        } else if let Some(v) = stat_counter(line, "rocksdb.compact.write.bytes") {
            compact = Some(v);
        }
    }
    if let (Some(u), Some(f), Some(c)) = (user, flush, compact) {
        if u > 0 {
            out.write_amp
                .push(("statistics".to_string(), (f + c) as f64 / u as f64));
        }
    }
    out.peak_rss_kib = time_rss.or(hwm);
    out
}

/// Renders a [`ParsedOutput`] as tab-separated lines for shell scripts.
pub fn render_tsv(p: &ParsedOutput) -> String {
    let mut s = String::new();
    for r in &p.results {
        s.push_str(&format!(
            "result\t{}\t{}\t{:.3}\t{:.3}\t{}\n",
            r.name, r.ops_per_sec, r.micros_per_op, r.seconds, r.operations
        ));
    }
    for (name, secs, ops) in &p.settle {
        s.push_str(&format!("settle\t{name}\t{secs:.3}\t{ops}\n"));
    }
    for (name, wa) in &p.write_amp {
        s.push_str(&format!("write_amp\t{name}\t{wa:.3}\n"));
    }
    if let Some(kib) = p.peak_rss_kib {
        s.push_str(&format!("peak_rss_kib\t{kib}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB_BENCH: &str = include_str!("../testdata/db_bench_7.8.3.out");

    fn merged(elapsed: f64, thread_seconds: f64, done: u64, bytes: u64, msg: &str) -> MergedStats {
        MergedStats {
            elapsed,
            thread_seconds,
            done,
            bytes,
            message: msg.to_string(),
        }
    }

    #[test]
    fn formats_like_db_bench() {
        // Real db_bench 7.8.3: "fillrandom   :       5.822 micros/op 171485 ops/sec 0.058
        // seconds 10000 operations;  166.2 MB/s" (10000 ops of 16+1000 bytes).
        let m = merged(0.058315, 0.05822, 10000, 10000 * 1016, "");
        assert_eq!(
            m.result_line("fillrandom"),
            "fillrandom   :       5.822 micros/op 171482 ops/sec 0.058 seconds 10000 operations;  166.2 MB/s"
        );
        let m = merged(
            0.5,
            0.5,
            1000,
            0,
            "( reads:900 writes:100 total:1000 found:900)",
        );
        assert_eq!(
            m.result_line("readrandomwriterandom"),
            "readrandomwriterandom :     500.000 micros/op 2000 ops/sec 0.500 seconds 1000 operations; ( reads:900 writes:100 total:1000 found:900)"
        );
        let m = merged(1.0, 1.0, 10, 2 * 1048576, "(8 of 10 found)\n");
        assert_eq!(
            m.result_line("readrandom"),
            "readrandom   :  100000.000 micros/op 10 ops/sec 1.000 seconds 10 operations;    2.0 MB/s (8 of 10 found)\n"
        );
    }

    #[test]
    fn formatted_lines_parse_back() {
        let m = merged(2.0, 4.0, 1000, 1000 * 1016, "(600 of 1000 found)\n");
        let line = m.result_line("seekrandom");
        let r = parse_result_line(line.trim_end()).expect("own line parses");
        assert_eq!(r.name, "seekrandom");
        assert_eq!(r.ops_per_sec, 500);
        assert_eq!(r.micros_per_op, 4000.0);
        assert_eq!(r.operations, 1000);
        assert_eq!(r.found, Some((600, 1000)));
    }

    #[test]
    fn parses_real_db_bench_output() {
        let p = parse_output(DB_BENCH);
        let names: Vec<&str> = p.results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "fillrandom",
                "overwrite",
                "readrandom",
                "seekrandom",
                "readseq",
                "fillseq",
                "readrandomwriterandom"
            ]
        );
        let fr = &p.results[0];
        assert_eq!(fr.micros_per_op, 5.822);
        assert_eq!(fr.ops_per_sec, 171485);
        assert_eq!(fr.seconds, 0.058);
        assert_eq!(fr.operations, 10000);
        assert_eq!(fr.mb_per_sec, Some(166.2));
        assert_eq!(p.results[2].found, Some((8618, 10000)));
        assert_eq!(p.results[3].found, Some((8605, 10000)));
        assert_eq!(p.results[6].mb_per_sec, None);
        assert_eq!(p.results[6].ops_per_sec, 359518);
        // Nothing was flushed in that tiny run: (0 + 0) / bytes.written.
        assert_eq!(p.write_amp, vec![("statistics".to_string(), 0.0)]);
    }

    #[test]
    fn parses_nokv_extras_and_time_v() {
        let text = "fillrandom   :       2.000 micros/op 500000 ops/sec 2.000 seconds 1000000 operations;  484.4 MB/s\n\
settle       : fillrandom 0.500 seconds waiting for flush+compaction (included above); 666666 ops/sec without it\n\
write-amp    : fillrandom 2.500 (user 1.0 GB, flush 1.0 GB, compaction 1.5 GB)\n\
peak RSS     : 1234 kB (VmHWM)\n\
\tMaximum resident set size (kbytes): 5678\n";
        let p = parse_output(text);
        assert_eq!(p.results.len(), 1);
        assert_eq!(p.settle, vec![("fillrandom".to_string(), 0.5, 666666)]);
        assert_eq!(p.write_amp, vec![("fillrandom".to_string(), 2.5)]);
        assert_eq!(p.peak_rss_kib, Some(5678));
        let p = parse_output("peak RSS     : 1234 kB (VmHWM)\n");
        assert_eq!(p.peak_rss_kib, Some(1234));
        let tsv = render_tsv(&parse_output(text));
        assert!(tsv.starts_with("result\tfillrandom\t500000\t2.000\t2.000\t1000000\n"));
        assert!(tsv.contains("settle\tfillrandom\t0.500\t666666\n"));
    }

    #[test]
    fn statistics_write_amp() {
        let text = "rocksdb.bytes.written COUNT : 1000\nrocksdb.compact.write.bytes COUNT : 1500\nrocksdb.flush.write.bytes COUNT : 1000\nrocksdb.remote.compact.write.bytes COUNT : 7\n";
        assert_eq!(
            parse_output(text).write_amp,
            vec![("statistics".to_string(), 2.5)]
        );
    }

    #[test]
    fn ignores_other_lines() {
        for l in [
            "DB path: [/tmp/x]",
            "fillrandom   : skipped (--use_existing_db is true)",
            "Keys:       16 bytes each (+ 0 bytes user-defined timestamp)",
            "rocksdb.db.get.micros P50 : 0.000000 P95 : 0.000000",
            "",
        ] {
            assert_eq!(parse_result_line(l), None, "{l}");
        }
    }
}
