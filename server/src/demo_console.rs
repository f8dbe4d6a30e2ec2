//! Commands typed into the terminal running `concord demo`: `cut eu us` cuts the link between two
//! regions (its delay proxy drops the connection and refuses new ones, as a network cut would),
//! `heal eu us` brings it back. So a person, or a browser test, can watch the regions notice a
//! cut and route around it on the demo's region map. The commands come from standard input only:
//! nothing on the network can cut a link.

use std::io::BufRead;

use thiserror::Error;
use tokio::sync::mpsc;

use crate::delay_proxy::DelayProxy;

/// What one line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Cut(String, String),
    Heal(String, String),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    #[error(
        "commands: `cut REGION REGION` cuts the link between two regions, `heal REGION REGION` restores it"
    )]
    Unknown,
    #[error("no link between {0} and {1} (regions: {2})")]
    NoSuchLink(String, String, String),
}

/// Parses one typed line; `None` for a blank one.
pub fn parse(line: &str) -> Result<Option<Command>, CommandError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[..] {
        [] => Ok(None),
        ["cut", a, b] => Ok(Some(Command::Cut(a.into(), b.into()))),
        ["heal", a, b] => Ok(Some(Command::Heal(a.into(), b.into()))),
        _ => Err(CommandError::Unknown),
    }
}

/// The demo's links: one delay proxy per pair of regions.
pub struct Links {
    regions: Vec<String>,
    links: Vec<(String, String, DelayProxy)>,
}

impl Links {
    pub fn new(regions: &[String]) -> Links {
        Links {
            regions: regions.to_vec(),
            links: Vec::new(),
        }
    }

    /// Records the proxy that carries the link between regions `a` and `b`.
    pub fn add(&mut self, a: &str, b: &str, proxy: DelayProxy) {
        self.links.push((a.into(), b.into(), proxy));
    }

    /// Carries out one typed line; returns what to tell the person who typed it.
    pub fn run(&self, line: &str) -> Result<Option<String>, CommandError> {
        let Some(command) = parse(line)? else {
            return Ok(None);
        };
        let (Command::Cut(a, b) | Command::Heal(a, b)) = &command;
        let proxy = self.find(a, b)?;
        Ok(Some(match command {
            Command::Cut(..) => {
                proxy.cut();
                format!("link {a}-{b} cut (`heal {a} {b}` restores it)")
            }
            Command::Heal(..) => {
                proxy.heal();
                format!("link {a}-{b} healed")
            }
        }))
    }

    fn find(&self, a: &str, b: &str) -> Result<&DelayProxy, CommandError> {
        self.links
            .iter()
            .find(|(x, y, _)| (x == a && y == b) || (x == b && y == a))
            .map(|(_, _, p)| p)
            .ok_or_else(|| CommandError::NoSuchLink(a.into(), b.into(), self.regions.join(", ")))
    }
}

/// The lines typed on standard input, read on a plain thread: tokio's stdin reads on a blocking
/// task that would hold up the runtime's shutdown until Enter is pressed. The channel closes at
/// end of input (stdin closed or not a terminal at all).
pub fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_parse_to_commands() {
        assert_eq!(parse("  "), Ok(None));
        assert_eq!(
            parse("cut eu us"),
            Ok(Some(Command::Cut("eu".into(), "us".into())))
        );
        assert_eq!(
            parse(" heal  us eu \n"),
            Ok(Some(Command::Heal("us".into(), "eu".into())))
        );
        assert_eq!(parse("cut eu"), Err(CommandError::Unknown));
        assert_eq!(parse("drop table"), Err(CommandError::Unknown));
    }

    /// A cut link refuses connections until healed, named in either order.
    #[tokio::test]
    async fn cut_and_heal_reach_the_pair_s_proxy() {
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = DelayProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            target.local_addr().unwrap(),
            Duration::ZERO,
        )
        .await
        .unwrap();
        let addr = proxy.addr;
        let mut links = Links::new(&["eu".into(), "us".into(), "ap".into()]);
        links.add("eu", "us", proxy);
        let forwarded = async || {
            use tokio::io::AsyncReadExt;
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            // A cut proxy closes what it accepts; a working one connects through to the target.
            let through = tokio::time::timeout(Duration::from_secs(5), target.accept());
            tokio::select! {
                a = through => a.is_ok(),
                _ = c.read_u8() => false,
            }
        };
        assert!(forwarded().await);
        assert_eq!(
            links.run("cut us eu").unwrap().unwrap(),
            "link us-eu cut (`heal us eu` restores it)"
        );
        assert!(!forwarded().await);
        assert_eq!(
            links.run("heal eu us").unwrap().unwrap(),
            "link eu-us healed"
        );
        assert!(forwarded().await);
        assert_eq!(
            links.run("cut eu ap").unwrap_err().to_string(),
            "no link between eu and ap (regions: eu, us, ap)"
        );
    }
}
