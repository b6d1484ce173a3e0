//! Where to connect: a URL (`--database-url` or `DATABASE_URL`), or else the
//! libpq environment variables psql reads, so that `pg-jobs serve` connects
//! wherever `psql` without arguments would.

use std::time::Duration;

use tokio_postgres::Config;

// Of libpq's variables, PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD and
// PGAPPNAME are read; the connection is made without TLS.

/// `url` as given, or the libpq environment read through `env`.
pub fn config(url: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    let mut config = match url {
        Some(url) => url
            .parse::<Config>()
            // The parser's message never repeats the URL, which may hold a password.
            .map_err(|e| format!("the database URL is not valid: {e}"))?,
        None => from_libpq_env(&env)?,
    };
    if config.get_application_name().is_none() {
        config.application_name("pg-jobs serve");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    Ok(config)
}

fn from_libpq_env(env: &impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    let get = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut config = Config::new();
    let user = get("PGUSER")
        .or_else(|| get("USER"))
        .ok_or("no database URL, and neither PGUSER nor USER is set")?;
    match get("PGHOST") {
        Some(hosts) => {
            for host in hosts.split(',') {
                config.host(host);
            }
        }
        // libpq's default: the socket directory of Debian's PostgreSQL.
        None => {
            config.host_path("/var/run/postgresql");
        }
    }
    if let Some(port) = get("PGPORT") {
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("PGPORT = {port:?} is not a port number"))?;
        config.port(port);
    }
    config.dbname(get("PGDATABASE").unwrap_or_else(|| user.clone()));
    config.user(&user);
    if let Some(password) = get("PGPASSWORD") {
        config.password(password);
    }
    if let Some(name) = get("PGAPPNAME") {
        config.application_name(&name);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio_postgres::config::Host;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn url_wins_over_the_environment() {
        let c = config(
            Some("postgresql://alice:secret@db.example:6543/app"),
            env(&[("PGUSER", "bob")]),
        )
        .unwrap();
        assert_eq!(c.get_user(), Some("alice"));
        assert_eq!(c.get_dbname(), Some("app"));
        assert_eq!(c.get_ports(), &[6543]);
        assert_eq!(c.get_application_name(), Some("pg-jobs serve"));
    }

    #[test]
    fn libpq_environment() {
        let c = config(
            None,
            env(&[
                ("PGHOST", "/tmp/sock"),
                ("PGPORT", "5433"),
                ("PGUSER", "carol"),
                ("PGPASSWORD", "pw"),
            ]),
        )
        .unwrap();
        assert_eq!(c.get_user(), Some("carol"));
        assert_eq!(c.get_dbname(), Some("carol"));
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        assert!(matches!(&c.get_hosts()[0], Host::Unix(p) if p.to_str() == Some("/tmp/sock")));
    }

    #[test]
    fn bad_input_is_named_but_no_password_is_repeated() {
        let e = config(None, env(&[("PGUSER", "x"), ("PGPORT", "many")])).unwrap_err();
        assert!(e.contains("PGPORT = \"many\""), "{e}");
        let e = config(Some("postgresql://u:hunter2@h:notaport/db"), env(&[])).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(config(None, env(&[])).is_err());
    }
}
