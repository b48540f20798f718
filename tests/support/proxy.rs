//! A forward proxy on 127.0.0.1, as a corporate proxy would stand between an edge host and
//! Firehose: `CONNECT host:port` opens a tunnel (https endpoints); any other request, in
//! absolute form (`POST http://host:port/ HTTP/1.1`), is relayed to its host as it is. Every
//! request's target is recorded. Its threads end with the test process.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

pub struct ForwardProxy {
    pub url: String,
    /// `METHOD target` of each request, in arrival order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl ForwardProxy {
    pub fn start() -> ForwardProxy {
        let (address, requests) = super::serve_connections(relay);
        ForwardProxy { url: format!("http://{address}"), requests }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

fn relay(client: TcpStream, recorded: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let read = reader.read_until(b'\n', &mut head)?;
        if read == 0 || head.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let request_line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
    recorded.lock().expect("requests").push(format!("{method} {target}"));
    let mut client_writer = client;
    let upstream = if method == "CONNECT" {
        let upstream = TcpStream::connect(&target)?;
        client_writer.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        upstream
    } else {
        let authority = target.trim_start_matches("http://").split('/').next().unwrap_or_default();
        let mut upstream = TcpStream::connect(authority)?;
        upstream.write_all(&head)?;
        upstream
    };
    let mut upstream_reader = upstream.try_clone()?;
    let mut upstream_writer = upstream;
    let to_upstream = std::thread::spawn(move || {
        // Bytes the BufReader already took from the client go first.
        let buffered = reader.buffer().to_vec();
        let _ = upstream_writer.write_all(&buffered);
        let _ = std::io::copy(reader.get_mut(), &mut upstream_writer);
        let _ = upstream_writer.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut upstream_reader, &mut client_writer);
    let _ = client_writer.shutdown(std::net::Shutdown::Write);
    let _ = to_upstream.join();
    Ok(())
}
