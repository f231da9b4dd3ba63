//! Raw TCP exchanges for the TCP route tests.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Writes `payload` on `stream` (from a second thread, so a peer that echoes cannot
/// deadlock us), half-closes the write side, and reads until EOF.
///
/// Returns everything read. Reads are bounded by `timeout` per read call and the
/// total by `max_len`.
pub fn send_and_half_close(
    stream: TcpStream,
    payload: Vec<u8>,
    timeout: Duration,
    max_len: usize,
) -> Result<Vec<u8>> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = stream.try_clone().context("cloning socket")?;
    let write = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&payload)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading after {} bytes", got.len()))?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > max_len {
            bail!("peer sent more than {max_len} bytes");
        }
    }
    write
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
        .context("writing payload")?;
    Ok(got)
}

/// A deterministic, non-repeating-looking payload of `len` bytes.
pub fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            // xorshift32: cheap, and makes misordered or dropped chunks visible.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}
