//! What the benchmarks share about how they were started.

/// True when a bench runs as a check rather than a measurement, as
/// criterion decides: under `cargo test --benches` (cargo passes no
/// `--bench`) or `cargo bench -- --test`. Each part then runs once, on
/// small inputs, so a broken bench fails CI without costing its minutes.
pub fn quick() -> bool {
    let args: Vec<String> = std::env::args().collect();
    !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--test")
}

/// The environment variable `name` as a number, or else `full` when
/// measuring and `small` when [`quick`].
pub fn knob(name: &str, full: usize, small: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { small } else { full })
}
