//! Dropping root: after binding, before the first accept.
//!
//! Started as root (to bind a port below 1024), pibl becomes `user` and
//! `group` from the configuration for good, parent and children alike.
//! Files the children write are handed to that user first, so they stay
//! writable.

use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User, chown, setgid, setgroups, setuid};

use crate::config::Config;
use crate::diag;
use crate::error::Error;

/// Becomes the configured user, if there is one and we are root.
/// `writable` are the paths that must stay writable afterwards.
pub fn drop_root(config: &Config, writable: &[&Path]) -> Result<(), Error> {
    let Some(user_name) = &config.user else {
        return Ok(());
    };
    if !Uid::effective().is_root() {
        diag!("not started as root: user \"{user_name}\" ignored");
        return Ok(());
    }
    let unknown = |what: &str, name: &str| {
        Error::config(
            &config.path,
            0,
            format!("{what} \"{name}\": no such {what}"),
        )
    };
    let user = User::from_name(user_name)
        .ok()
        .flatten()
        .ok_or_else(|| unknown("user", user_name))?;
    let gid: Gid = match &config.group {
        None => user.gid,
        Some(name) => {
            Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| unknown("group", name))?
                .gid
        }
    };
    for path in writable {
        chown(*path, Some(user.uid), Some(gid)).map_err(|e| {
            Error::os(
                format!("cannot hand {} to {user_name}", path.display()),
                e.into(),
            )
        })?;
    }
    let os = |what: &str, e: nix::errno::Errno| Error::os(format!("cannot {what}"), e.into());
    setgroups(&[gid]).map_err(|e| os("set groups", e))?;
    setgid(gid).map_err(|e| os("set group id", e))?;
    setuid(user.uid).map_err(|e| os("set user id", e))?;
    Ok(())
}
