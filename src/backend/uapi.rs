//! wireguard-go's cross-platform configuration protocol ("UAPI"), spoken in-process over its
//! control socket `/run/wireguard/<name>.sock`: how the wg-quick backend reads the stats of a
//! tunnel wireguard-go serves (the `wg` tool does the same; no program is run here).
//!
//! The socket is only used when `netdev::userspace_socket` trusts it (a socket owned by root
//! or us, in a directory only they can change, listening in this network namespace), and
//! every answer is bounded in time and size.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Stats;
use crate::error::{Result, WgError};

/// How long the daemon may take to answer.
const BOUND: Duration = Duration::from_secs(1);
/// The most of an answer read (one peer with many allowed IPs fits many times over).
const MAX_ANSWER: u64 = 1 << 20;

fn hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a `get=1` answer says of the peer `key`; None when it names no such peer.
pub fn parse_peer(answer: &str, key: &[u8; 32], now: SystemTime) -> Option<Stats> {
    let want = hex(key);
    let mut found: Option<Stats> = None;
    let mut ours = false;
    let (mut secs, mut nsecs) = (0u64, 0u32);
    for line in answer.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k == "public_key" {
            ours = v == want;
            if ours {
                found = Some(Stats::default());
            }
            continue;
        }
        let (true, Some(s)) = (ours, found.as_mut()) else {
            continue;
        };
        match k {
            "rx_bytes" => s.rx_bytes = v.parse().unwrap_or(0),
            "tx_bytes" => s.tx_bytes = v.parse().unwrap_or(0),
            "endpoint" => s.endpoint = Some(v.to_string()),
            "last_handshake_time_sec" => secs = v.parse().unwrap_or(0),
            "last_handshake_time_nsec" => nsecs = v.parse::<u32>().unwrap_or(0).min(999_999_999),
            _ => {}
        }
    }
    let mut s = found?;
    if secs != 0 || nsecs != 0 {
        // A time past what SystemTime holds is nonsense: no handshake is reported.
        if let Some(at) = UNIX_EPOCH.checked_add(Duration::new(secs, nsecs)) {
            let age = now.duration_since(at).unwrap_or_default();
            s.last_handshake_ms = Some(age.as_secs_f64() * 1000.0);
        }
    }
    Some(s)
}

/// The stats of peer `key` of the userspace tunnel `name`.
pub fn stats(name: &str, key: &[u8; 32]) -> Result<Stats> {
    let fail = |why: String| WgError::setup("stats", format!("{name}'s control socket: {why}"));
    if !crate::netdev::userspace_socket(name) {
        return Err(fail("none that can be trusted in this namespace".into()));
    }
    let mut s = UnixStream::connect(format!("/run/wireguard/{name}.sock"))
        .map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(BOUND))
        .map_err(|e| fail(e.to_string()))?;
    s.set_write_timeout(Some(BOUND))
        .map_err(|e| fail(e.to_string()))?;
    s.write_all(b"get=1\n\n").map_err(|e| fail(e.to_string()))?;
    // The answer ends with an empty line after `errno=N`; the daemon then closes or waits.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // One bound for the whole answer, not per read (a daemon that drips bytes gets cut off).
    let deadline = std::time::Instant::now() + BOUND;
    let mut r = s.take(MAX_ANSWER);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(fail(format!("no complete answer within {BOUND:?}")));
        }
        r.get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| fail(e.to_string()))?;
        let n = r.read(&mut buf).map_err(|e| fail(e.to_string()))?;
        answer.extend_from_slice(&buf[..n]);
        if n == 0 || answer.ends_with(b"\n\n") {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    match answer.lines().find_map(|l| l.strip_prefix("errno=")) {
        Some("0") => {}
        Some(n) => return Err(fail(format!("errno {n}"))),
        None => return Err(fail("no complete answer".into())),
    }
    parse_peer(&answer, key, SystemTime::now()).ok_or_else(|| fail("the peer is gone".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_of_our_peer_is_read_and_others_ignored() {
        let ours = [7u8; 32];
        let other = [9u8; 32];
        let answer = format!(
            "private_key={}\nlisten_port=4242\npublic_key={}\nrx_bytes=99\ntx_bytes=98\n\
             last_handshake_time_sec=1\nlast_handshake_time_nsec=0\npublic_key={}\n\
             endpoint=192.0.2.1:51820\nrx_bytes=1000\ntx_bytes=2000\n\
             last_handshake_time_sec=100\nlast_handshake_time_nsec=500000000\n\
             allowed_ip=0.0.0.0/0\nerrno=0\n\n",
            hex(&[1; 32]),
            hex(&other),
            hex(&ours)
        );
        let now = UNIX_EPOCH + Duration::from_secs(110);
        let s = parse_peer(&answer, &ours, now).unwrap();
        assert_eq!((s.rx_bytes, s.tx_bytes), (1000, 2000));
        assert_eq!(s.endpoint.as_deref(), Some("192.0.2.1:51820"));
        assert_eq!(s.last_handshake_ms, Some(9500.0));
        assert!(parse_peer(&answer, &[3; 32], now).is_none());
    }

    #[test]
    fn no_handshake_yet_is_none() {
        let ours = [7u8; 32];
        let answer = format!(
            "public_key={}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\nerrno=0\n\n",
            hex(&ours)
        );
        let s = parse_peer(&answer, &ours, SystemTime::now()).unwrap();
        assert_eq!(s.last_handshake_ms, None);
    }
}
