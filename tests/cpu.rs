//! CPU time of the processes a benchmark loads (Linux `/proc`): this one, and the Redis and
//! RabbitMQ servers beside it, so a figure per job or per call can say where the time went.
//! And which CPUs this process's threads run on: [`pin_current_thread`], [`thread_cpus`].

use std::process::Command;

/// utime + stime of process `pid` (`"self"` for this one) so far, seconds; 0 if unreadable.
pub fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(11) + field(12)) as f64 / clock_ticks()
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The pid of the first process whose command name (`/proc/PID/comm`) is `comm`.
pub fn pid_of(comm: &str) -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_pid = name.bytes().all(|b| b.is_ascii_digit());
        (is_pid && std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm))
            .then_some(name)
    })
}

/// Waits until this process, the Redis server (`redis_pid`) and the RabbitMQ node are quiet
/// together — under a tenth of one core over a quarter second — or `limit` has passed, and
/// returns how long it waited. Between a benchmark's phases: one phase's leftover work (the
/// delivery reports the sim still pushes, and their handling) must not be charged to the
/// next.
pub async fn quiesce(redis_pid: Option<String>, limit: std::time::Duration) -> std::time::Duration {
    let started = std::time::Instant::now();
    let mut split = CpuSplit::start(redis_pid);
    let window = std::time::Duration::from_millis(250);
    while started.elapsed() < limit {
        tokio::time::sleep(window).await;
        let now = CpuSplit::read(&split.pids);
        let used: f64 = now.iter().zip(&split.start).map(|(n, s)| n - s).sum();
        if used < window.as_secs_f64() / 10.0 {
            break;
        }
        split.start = now;
    }
    started.elapsed()
}

/// CPU seconds of this process, the Redis server (`redis_pid`, from `INFO server`) and the
/// RabbitMQ node (`beam.smp`) between [`CpuSplit::start`] and [`CpuSplit::took`].
pub struct CpuSplit {
    pids: [Option<String>; 3],
    start: [f64; 3],
}

impl CpuSplit {
    pub fn start(redis_pid: Option<String>) -> Self {
        let pids = [Some("self".to_owned()), redis_pid, pid_of("beam.smp")];
        let start = Self::read(&pids);
        Self { pids, start }
    }

    fn read(pids: &[Option<String>; 3]) -> [f64; 3] {
        pids.each_ref().map(|p| p.as_deref().map_or(0.0, cpu_secs))
    }

    /// "this process X µs, Redis Y µs, RabbitMQ Z µs" per one of `n` units since the start.
    pub fn per(&self, n: u64) -> String {
        let now = Self::read(&self.pids);
        let us = |i: usize| (now[i] - self.start[i]) * 1e6 / n.max(1) as f64;
        format!(
            "this process {:.0} µs, Redis {:.0} µs, RabbitMQ {:.0} µs",
            us(0),
            us(1),
            us(2)
        )
    }
}

/// Pins the calling thread to CPU `cpu` (`sched_setaffinity`); threads it starts afterwards
/// inherit that.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    Ok(rustix::thread::sched_setaffinity(None, &set)?)
}

/// The CPUs this process's threads may run on, by thread name, as
/// `/proc/self/task/*/status` says (`Cpus_allowed_list`): "main ×1: 0, stack-services ×2: 1".
pub fn thread_cpus() -> String {
    let mut seen = std::collections::BTreeMap::<(String, String), usize>::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
        let status = read("status");
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("?")
            .trim()
            .to_owned();
        *seen
            .entry((read("comm").trim().to_owned(), cpus))
            .or_default() += 1;
    }
    seen.iter()
        .map(|((name, cpus), n)| format!("{name} ×{n}: {cpus}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole machine's CPU time (`/proc/stat`, first line) over a stretch of a benchmark,
/// sampled every 50 ms by a thread of its own: how busy all CPUs were, and how much time the
/// hypervisor took from this virtual machine's CPUs (steal) — in all and in the worst 50 ms.
/// A stall that hits both paths of a paired window alike, with nothing of this process's own
/// to show for it, is told apart by these.
pub struct Machine {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: Option<std::thread::JoinHandle<MachineTime>>,
}

/// What a [`Machine`] saw, in seconds of CPU time.
#[derive(Debug, Default, Clone, Copy)]
pub struct MachineTime {
    /// Every CPU's non-idle time, steal excluded.
    pub busy: f64,
    pub steal: f64,
    /// The most steal in one 50 ms sample (both CPUs together).
    pub worst_steal: f64,
    /// TCP connections this machine opened (`/proc/net/snmp`, `ActiveOpens`).
    pub connections: u64,
}

/// `ActiveOpens` of `/proc/net/snmp`: TCP connections opened by this machine so far.
fn active_opens() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ActiveOpens")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// (non-idle without steal, steal) so far, in clock ticks, from `/proc/stat`'s `cpu` line.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    (at(0) + at(1) + at(2) + at(5) + at(6), at(7))
}

impl Machine {
    pub fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = std::thread::spawn(move || {
            let ticks = clock_ticks();
            let (busy0, steal0) = machine_ticks();
            let opens0 = active_opens();
            let (mut last_steal, mut worst) = (steal0, 0);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let (_, steal) = machine_ticks();
                worst = worst.max(steal.saturating_sub(last_steal));
                last_steal = steal;
            }
            let (busy, steal) = machine_ticks();
            MachineTime {
                busy: busy.saturating_sub(busy0) as f64 / ticks,
                steal: steal.saturating_sub(steal0) as f64 / ticks,
                worst_steal: worst as f64 / ticks,
                connections: active_opens().saturating_sub(opens0),
            }
        });
        Self {
            stop,
            sampler: Some(sampler),
        }
    }

    pub fn took(mut self) -> MachineTime {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.sampler
            .take()
            .and_then(|s| s.join().ok())
            .unwrap_or_default()
    }
}
