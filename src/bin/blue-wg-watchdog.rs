//! `blue-wg-watchdog <interface> <owner pid> <owner start time>`: see `src/watchdog.rs`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(blue_wireguard::watchdog::main(&args));
}
