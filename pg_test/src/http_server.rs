//! A small HTTP/1.1 server on 127.0.0.1 for the tests of jobs.fetch: it
//! records every request and answers with a handler, unless a script says
//! otherwise for the next requests to a path (fail N times, hold a request).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

enum Scripted {
    Reply(Reply),
    /// Reads the request, records it and never answers (for this long).
    Hold(Duration),
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

struct State {
    requests: Vec<Request>,
    scripts: HashMap<String, VecDeque<Scripted>>,
}

pub struct HttpServer {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl HttpServer {
    /// Answers every request with `handler`, from a thread per connection.
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the test HTTP server");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            scripts: HashMap::new(),
        }));
        let handler: Arc<Handler> = Arc::new(handler);
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (state, handler) = (shared.clone(), handler.clone());
                std::thread::spawn(move || serve(stream, &state, &*handler));
            }
        });
        HttpServer { port, state }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The requests whose path (query excluded) is `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.split('?').next() == Some(path))
            .collect()
    }

    /// The next `times` requests to `path` get `reply` instead of the handler's.
    pub fn reply_next(&self, path: &str, times: usize, reply: Reply) {
        let mut state = self.state.lock().unwrap();
        let script = state.scripts.entry(path.into()).or_default();
        script.extend((0..times).map(|_| Scripted::Reply(reply.clone())));
    }

    /// The next request to `path` is recorded and not answered for `how_long`.
    pub fn hold_next(&self, path: &str, how_long: Duration) {
        let mut state = self.state.lock().unwrap();
        state
            .scripts
            .entry(path.into())
            .or_default()
            .push_back(Scripted::Hold(how_long));
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>, handler: &Handler) {
    let Some(request) = read_request(&stream) else {
        return;
    };
    let scripted = {
        let mut state = state.lock().unwrap();
        state.requests.push(request.clone());
        let path = request.path.split('?').next().unwrap_or("").to_string();
        state.scripts.get_mut(&path).and_then(VecDeque::pop_front)
    };
    let reply = match scripted {
        Some(Scripted::Reply(reply)) => reply,
        Some(Scripted::Hold(how_long)) => {
            std::thread::sleep(how_long);
            return;
        }
        None => handler(&request),
    };
    let mut head = format!(
        "HTTP/1.1 {} Test\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(reply.body.as_bytes());
    let _ = stream.flush();
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    })
}
