//! `lepton run --port`: the board's UART link from the host. `PORT` is a serial port (a board's
//! USART1 through a USB-serial adapter: `/dev/ttyUSB0`, `COM3`) or `HOST:PORT`, a TCP address
//! (QEMU with `-serial tcp::PORT,server=on`). The session is `lepton_core::uart`'s.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lepton_core::uart::{Port, FRAME_TIMEOUT};

/// A serial port as a [`Port`].
struct Serial(Box<dyn serialport::SerialPort>);

impl Read for Serial {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Serial {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Port for Serial {
    fn set_read_timeout(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.0.set_timeout(timeout).map_err(std::io::Error::other)
    }
}

/// `port` as a TCP address when it is `HOST:PORT` (and not a device path).
fn tcp_address(port: &str) -> Option<SocketAddr> {
    if port.starts_with('/') || port.starts_with("COM") {
        return None;
    }
    port.to_socket_addrs().ok()?.next()
}

/// Open the link at `port`: a TCP connection (retried for 10 s while refused, as when QEMU is
/// still starting) or the serial port at `baud`, 8N1.
pub fn open(port: &str, baud: u32) -> Result<Box<dyn Port>> {
    if let Some(addr) = tcp_address(port) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("connecting to {addr} (is QEMU running with `-serial tcp::PORT,server=on`?)")),
            }
        };
        stream.set_nodelay(true)?;
        return Ok(Box::new(stream));
    }
    match serialport::new(port, baud).timeout(FRAME_TIMEOUT).open() {
        Ok(p) => Ok(Box::new(Serial(p))),
        Err(e) => {
            let ports = serialport::available_ports().unwrap_or_default();
            let names: Vec<&str> = ports.iter().map(|p| p.port_name.as_str()).collect();
            let known = if names.is_empty() { "no serial ports found".to_string() } else { format!("serial ports here: {}", names.join(", ")) };
            bail!("cannot open serial port {port}: {e} ({known}; for QEMU give HOST:PORT)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_told_from_tcp_addresses() {
        assert!(tcp_address("127.0.0.1:4444").is_some());
        assert!(tcp_address("localhost:4444").is_some());
        assert!(tcp_address("/dev/ttyUSB0").is_none());
        assert!(tcp_address("COM3").is_none());
    }

    #[test]
    fn a_missing_serial_port_is_a_clear_error() {
        let e = open("/dev/lepton-no-such-port", 115_200).err().unwrap().to_string();
        assert!(e.contains("cannot open serial port /dev/lepton-no-such-port"), "{e}");
    }
}
