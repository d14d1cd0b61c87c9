//! The open-files limit.
//!
//! Every connection holds several descriptors: the client's, one kept
//! connection per backend it used, the log file's (each process or thread
//! opens its own, see `log`) and a pipe for splice(2).  A process per
//! connection needs a handful, but the thread model holds them all in one
//! process, and the soft limit most shells and sessions give, 1024, runs
//! out near two hundred connections: accept(2) and the backends' connect(2)
//! then fail with EMFILE.  pibl never uses select(2), so, as systemd
//! advises such programs (systemd 240's NEWS) and as Go's runtime does, it
//! raises its soft limit to the hard one at start; and it says so, as
//! HAProxy does, when even the hard limit is short of what `max_clients`
//! may need.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::config::{Config, Model};

/// Descriptors a thread of the thread model may hold besides its backend
/// connections: the client, the log file and a splice pipe's two ends.
const PER_THREAD: u64 = 4;
/// Descriptors the process holds whatever its load: standard streams, the
/// listener, the log file and what the helper threads open.
const BASE: u64 = 32;

/// Raises the soft open-files limit to the hard limit, and warns when the
/// thread model's `max_clients` may need more than that.  A failure is
/// said and changes nothing else: pibl runs, with fewer connections.
pub fn raise_open_files(config: &Config) {
    let limit = match raise() {
        Ok(limit) => limit,
        Err(e) => {
            crate::diag!("cannot raise the open files limit: {e}");
            return;
        }
    };
    let needed = needed(config);
    if limit < needed {
        crate::diag!(
            "the open files limit ({limit}) is below the {needed} that max_clients = {} may need; \
             connections beyond it wait or fail (raise it with ulimit -n or LimitNOFILE=)",
            config.max_clients
        );
    }
}

/// The soft limit, raised to the hard one: what the process may open.
fn raise() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// Descriptors the busiest process may need at `max_clients` connections:
/// the thread model's one process.  The other models spread connections
/// over processes, each with a handful.
fn needed(config: &Config) -> u64 {
    match config.model {
        Model::Thread => {
            let per_thread = PER_THREAD + config.backends.len() as u64;
            BASE + config.max_clients as u64 * per_thread
        }
        Model::Fork | Model::Prefork => BASE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(model: &str, max_clients: usize) -> Config {
        let text = format!(
            "backends = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n\
             model = \"{model}\"\nmax_clients = {max_clients}\n"
        );
        Config::parse("t.conf", &text).unwrap()
    }

    #[test]
    fn the_thread_model_needs_descriptors_for_every_connection() {
        assert_eq!(needed(&config("thread", 512)), 32 + 512 * 7);
        assert_eq!(needed(&config("fork", 512)), 32);
        assert_eq!(needed(&config("prefork", 512)), 32);
    }
}
