//! EC2's instance metadata service as IMDSv2 answers on 127.0.0.1: `PUT /latest/api/token`
//! (with a TTL header) gives a session token, and metadata is read only with it. Every request
//! is recorded (`METHOD path`). It has the instance identity document, and the instance's tags
//! (`Name`, `Team`) unless started [`FakeImds::without_tags`], as an instance that does not
//! allow tags in its metadata answers. Its threads end with the test process.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

const TOKEN: &str = "AQAEAFakeImdsToken==";

/// An instance identity document as EC2 gives it.
pub const IDENTITY_DOCUMENT: &str = r#"{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "ap-northeast-2c",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0a1b2c3d4e5f67890",
  "instanceId" : "i-0123456789abcdef0",
  "instanceType" : "m6i.large",
  "kernelId" : null,
  "pendingTime" : "2026-11-30T08:00:00Z",
  "privateIp" : "10.0.1.23",
  "ramdiskId" : null,
  "region" : "ap-northeast-2",
  "version" : "2017-09-30"
}"#;

pub struct FakeImds {
    /// What `AWS_EC2_METADATA_SERVICE_ENDPOINT` is set to.
    pub endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeImds {
    pub fn start() -> FakeImds {
        let (address, requests) = super::serve_connections(|client, recorded| answer(client, recorded, Tags::Allowed));
        FakeImds { endpoint: format!("http://{address}/"), requests }
    }

    /// An instance whose metadata options leave its tags out (`--instance-metadata-tags
    /// disabled`, the default): their paths are not found.
    pub fn without_tags() -> FakeImds {
        let (address, requests) = super::serve_connections(|client, recorded| answer(client, recorded, Tags::NotInMetadata));
        FakeImds { endpoint: format!("http://{address}/"), requests }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tags {
    Allowed,
    NotInMetadata,
}

/// Answers the requests of one connection, one after the other, until the client closes it.
fn answer(client: TcpStream, recorded: &Mutex<Vec<String>>, tags: Tags) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            if header.trim().is_empty() {
                break;
            }
            headers.push(header.trim().to_ascii_lowercase());
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned());
        recorded.lock().expect("requests").push(format!("{method} {path}"));
        let has = |name: &str| headers.iter().any(|header| header.starts_with(name));
        let with_token = headers.iter().any(|header| header == &format!("x-aws-ec2-metadata-token: {}", TOKEN.to_ascii_lowercase()));
        let (status, body) = match (method.as_str(), path.as_str()) {
            ("PUT", "/latest/api/token") if has("x-aws-ec2-metadata-token-ttl-seconds:") => ("200 OK", TOKEN),
            ("PUT", _) => ("400 Bad Request", ""),
            ("GET", _) if !with_token => ("401 Unauthorized", ""),
            ("GET", "/latest/meta-data/instance-id") => ("200 OK", "i-0123456789abcdef0"),
            ("GET", "/latest/meta-data/placement/region") => ("200 OK", "ap-northeast-2"),
            ("GET", "/latest/meta-data/placement/availability-zone") => ("200 OK", "ap-northeast-2c"),
            ("GET", "/latest/dynamic/instance-identity/document") => ("200 OK", IDENTITY_DOCUMENT),
            ("GET", "/latest/meta-data/tags/instance") if tags == Tags::Allowed => ("200 OK", "Name\nTeam"),
            ("GET", "/latest/meta-data/tags/instance/Name") if tags == Tags::Allowed => ("200 OK", "web-7"),
            ("GET", "/latest/meta-data/tags/instance/Team") if tags == Tags::Allowed => ("200 OK", "video"),
            _ => ("404 Not Found", ""),
        };
        let ttl = if path == "/latest/api/token" { "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n" } else { "" };
        write!(writer, "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\n{ttl}content-length: {}\r\n\r\n{body}", body.len())?;
        writer.flush()?;
    }
}
