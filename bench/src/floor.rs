//! The floor under any hub on this machine: what one thread spends to
//! write a frame to each of C loopback sockets, R times a second, with K
//! frames per write. No node takes part; the reading side is this
//! process's runtime, as for the fan-out scenario. On loopback the kernel
//! charges the receiving socket's work (queueing, waking the reader) to
//! the writer, exactly as it does to a node.

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::Report;

/// CPU time of the calling thread, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec, as
    // clock_gettime expects; it cannot fail for this clock.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// A server-to-client WebSocket text frame of `bytes` bytes in all.
fn frame(bytes: usize) -> Vec<u8> {
    let payload = bytes.saturating_sub(4).max(126);
    let mut out = vec![0x81, 126];
    out.extend_from_slice(&(payload as u16).to_be_bytes());
    out.resize(4 + payload, b'x');
    out
}

pub async fn floor(
    sockets: usize,
    rate: u64,
    seconds: u64,
    bytes: usize,
    per_write: usize,
) -> Report {
    let per_write = per_write.max(1);
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    let frame = frame(bytes);
    let writes = (rate * seconds) as usize / per_write;
    let expected = (writes * per_write * frame.len()) as u64;

    let mut readers = Vec::with_capacity(sockets);
    let mut servers = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let client = TcpStream::connect(addr).await.expect("loopback connects");
        client.set_nodelay(true).expect("nodelay");
        let (server, _) = listener.accept().expect("accepts");
        server.set_nodelay(true).expect("nodelay");
        servers.push(server);
        readers.push(tokio::spawn(read_all(client, expected)));
    }

    let batch = frame.repeat(per_write);
    let period = Duration::from_secs_f64(per_write as f64 / rate.max(1) as f64);
    let writer = std::thread::spawn(move || {
        let cpu0 = thread_cpu_secs();
        let begun = Instant::now();
        for i in 0..writes {
            let due = begun + period * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            for s in &mut servers {
                s.write_all(&batch).expect("the reader is alive");
            }
        }
        (thread_cpu_secs() - cpu0, begun.elapsed())
    });
    let (cpu, took) = tokio::task::spawn_blocking(move || writer.join().expect("writer ran"))
        .await
        .expect("writer joined");
    let mut short = 0;
    for r in readers {
        if r.await.unwrap_or(0) < expected {
            short += 1;
        }
    }

    let frames = (writes * per_write * sockets) as f64;
    let mut r = Report::new("floor");
    r.add("sockets", sockets);
    r.add("frame bytes", frame.len());
    r.add("frames per write", per_write);
    r.add("frames/s", frames / took.as_secs_f64());
    r.add("readers short of bytes", short);
    r.add("writer CPU (s)", cpu);
    r.add(
        "writer CPU per write (µs)",
        cpu * 1e6 / (writes * sockets).max(1) as f64,
    );
    r.add("writer CPU per frame (µs)", cpu * 1e6 / frames.max(1.0));
    r
}

/// Reads until `expected` bytes arrived or the socket ends; returns the count.
async fn read_all(mut s: TcpStream, expected: u64) -> u64 {
    let mut buf = [0u8; 8192];
    let mut got = 0u64;
    while got < expected {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    got
}
