//! `pibl cache ls` and `pibl cache purge [URL]`: the cache directory,
//! looked at and emptied from the command line while pibl runs or not.

use super::store::{Cache, key_of_url};
use crate::cli::CacheCommand;
use crate::config::Config;
use crate::error::Error;

/// `pibl cache ls` and `pibl cache purge [URL]`.
pub fn run(config: &Config, command: &CacheCommand) -> Result<(), Error> {
    let dir = &config.cache.dir;
    let cache = Cache::new(dir.clone(), config.cache.ttl, config.cache.max_entry);
    let failed = |e| Error::os(format!("cannot read cache directory {}", dir.display()), e);
    match command {
        CacheCommand::Ls => {
            if !dir.exists() {
                return Ok(());
            }
            println!("{:>10} {:>8} {:>8}  KEY", "SIZE", "AGE", "LEFT");
            for entry in cache.list().map_err(failed)? {
                println!(
                    "{:>10} {:>8} {:>8}  {}",
                    entry.size, entry.age, entry.left, entry.key
                );
            }
        }
        CacheCommand::Purge { url: None } => {
            let removed = if dir.exists() {
                cache.purge_all().map_err(failed)?
            } else {
                0
            };
            println!("{removed} entries removed");
        }
        CacheCommand::Purge { url: Some(url) } => {
            let key = key_of_url(url)
                .ok_or_else(|| Error::Usage(format!("\"{url}\" is not an http:// URL")))?;
            let removed = if dir.exists() {
                cache.purge(&key).map_err(failed)?
            } else {
                0
            };
            match removed {
                0 => println!("no entry for that URL"),
                1 => println!("1 entry removed"),
                n => println!("{n} entries removed (the URL's coded representations with it)"),
            }
        }
    }
    Ok(())
}
