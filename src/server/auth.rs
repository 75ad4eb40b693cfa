//! Client access control: bearer tokens read from `--auth-tokens FILE`.
//!
//! The file has one grant a line, `TOKEN read|write PREFIX`: `write` implies `read`, the
//! prefix is percent-decoded like a key in a URL, and an absent prefix means every key.
//! Blank lines and lines starting with `#` are skipped; a token may have several lines.
//! The file must not be readable by others (group is fine: `root:mmapd 0640`).
//!
//! With tokens set, every key route needs `Authorization: Bearer TOKEN` (401 without a
//! valid one, 403 outside its grants); a list of a prefix needs read on all of it;
//! `/health` stays open; `/status`, `/metrics` and `/v1/members` take any valid token.
//! Peer routes are the cluster secret's (and TLS's), the admin socket is gated by its
//! file mode, and neither takes tokens.
//!
//! Tokens are compared in constant time (`subtle`) and never logged or echoed: errors
//! name the line number, never the token.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hyper::header::HeaderValue;
use subtle::ConstantTimeEq;

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Reads: get, list (and watch, once it exists).
    Read,
    /// Writes and deletes; implies `Read`.
    Write,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug)]
pub enum Need<'a> {
    /// Nothing: `/health`.
    Nothing,
    /// Any valid token: `/status`, `/metrics`, `/v1/members`.
    AnyToken,
    /// `Access` on one key.
    Key(&'a [u8], Access),
    /// `Access` on every key that starts with the prefix (the empty prefix: every key).
    Prefix(&'a [u8], Access),
}

/// Why a request was not allowed. Never carries the token.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header (or not that scheme).
    Missing,
    /// A bearer token that is not in the file.
    Invalid,
    /// A valid token without the grant: what it lacks.
    Outside(String),
}

/// One grant: access to the keys under a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    access: Access,
    prefix: Vec<u8>,
}

/// The tokens of one file. Its `Debug` shows the count, never a token.
#[derive(Clone, Default)]
pub struct Tokens {
    /// Each token once, with all its grants.
    entries: Vec<(Vec<u8>, Vec<Grant>)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("count", &self.entries.len()).finish_non_exhaustive()
    }
}

impl Tokens {
    /// Reads and parses the file; refuses one that others may read.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mode = metadata.permissions().mode();
        if mode & 0o007 != 0 {
            return Err(format!(
                "{}: mode {:04o} lets every local user read the tokens; make it 0600 or 0640 (chmod o-rwx)",
                path.display(),
                mode & 0o7777
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|reason| format!("{}: {reason}", path.display()))
    }

    /// Parses the file's text. Errors name the line, never the token.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut tokens = Tokens::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |reason: &str| format!("line {}: {reason}", number + 1);
            let mut fields = line.split_ascii_whitespace();
            let token = fields.next().unwrap_or_default();
            if HeaderValue::from_str(token).is_err() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(error("the token must be visible ASCII (it travels in a header)"));
            }
            let access = match fields.next() {
                Some("read") => Access::Read,
                Some("write") => Access::Write,
                Some(_) => return Err(error("the second field must be `read` or `write`")),
                None => return Err(error("expected `TOKEN read|write [PREFIX]`")),
            };
            let prefix = match fields.next() {
                None => Vec::new(),
                Some(raw) => crate::server::api::percent_decode(raw)
                    .map_err(|e| error(&format!("the prefix is not percent-encoded well: {e}")))?,
            };
            if fields.next().is_some() {
                return Err(error(
                    "too many fields: expected `TOKEN read|write [PREFIX]` (percent-encode spaces)",
                ));
            }
            let grant = Grant { access, prefix };
            match tokens.entries.iter_mut().find(|(known, _)| known.as_slice() == token.as_bytes()) {
                Some((_, grants)) => grants.push(grant),
                None => tokens.entries.push((token.as_bytes().to_vec(), vec![grant])),
            }
        }
        if tokens.entries.is_empty() {
            return Err("no tokens: every key route would be refused".into());
        }
        Ok(tokens)
    }

    /// How many distinct tokens the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file held none (never true for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the `Authorization` header allows `need`.
    pub fn check(&self, authorization: Option<&HeaderValue>, need: Need<'_>) -> Result<(), Denied> {
        if matches!(need, Need::Nothing) {
            return Ok(());
        }
        let presented = authorization.and_then(|value| bearer(value.as_bytes())).ok_or(Denied::Missing)?;
        let grants = self.find(presented).ok_or(Denied::Invalid)?;
        let allowed = |access: Access, covers: &dyn Fn(&[u8]) -> bool| {
            grants.iter().any(|grant| grant.access >= access && covers(&grant.prefix))
        };
        match need {
            Need::Nothing | Need::AnyToken => Ok(()),
            Need::Key(key, access) => {
                if allowed(access, &|prefix| key.starts_with(prefix)) {
                    Ok(())
                } else {
                    Err(Denied::Outside(format!("the token has no {} grant for this key", access.as_str())))
                }
            }
            Need::Prefix(wanted, access) => {
                if allowed(access, &|prefix| wanted.starts_with(prefix)) {
                    Ok(())
                } else {
                    Err(Denied::Outside(format!(
                        "the token has no {} grant for every key of this prefix",
                        access.as_str()
                    )))
                }
            }
        }
    }

    /// The grants of `presented`: compared with every token in constant time for
    /// equal lengths, with no early exit, so the time taken does not tell which token
    /// matched or how much of one did.
    fn find(&self, presented: &[u8]) -> Option<&[Grant]> {
        let mut found = None;
        for (token, grants) in &self.entries {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(grants.as_slice());
            }
        }
        found
    }
}

/// The token of `Bearer TOKEN` (the scheme case-insensitive, RFC 6750).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The tokens in force and their file, swapped whole on reload (SIGHUP).
#[derive(Debug)]
pub struct Auth {
    path: PathBuf,
    current: RwLock<Arc<Tokens>>,
}

impl Auth {
    /// Loads the file; an error names it, and the node refuses to start.
    pub fn load(path: &Path) -> Result<Auth, String> {
        let tokens = Tokens::load(path)?;
        Ok(Auth { path: path.to_owned(), current: RwLock::new(Arc::new(tokens)) })
    }

    /// The tokens in force.
    pub fn tokens(&self) -> Arc<Tokens> {
        self.current.read().expect("tokens lock").clone()
    }

    /// Reads the file again. A bad file is refused and the tokens in force are kept.
    pub fn reload(&self) -> Result<usize, String> {
        let tokens = Tokens::load(&self.path)?;
        let count = tokens.len();
        *self.current.write().expect("tokens lock") = Arc::new(tokens);
        Ok(count)
    }

    /// The file's path, for logs.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    const FILE: &str = "\
# ops can do anything, the app only under app/, the reader only read config/
ops-token write
app-token write app/
reader-token read config/
reader-token read a%20b/
";

    #[test]
    fn write_implies_read_and_grants_cover_their_prefix_only() {
        let tokens = Tokens::parse(FILE).unwrap();
        assert_eq!(tokens.len(), 3);
        let app = header("Bearer app-token");
        assert_eq!(tokens.check(Some(&app), Need::Key(b"app/x", Access::Write)), Ok(()));
        assert_eq!(tokens.check(Some(&app), Need::Key(b"app/x", Access::Read)), Ok(()));
        assert!(matches!(
            tokens.check(Some(&app), Need::Key(b"other", Access::Read)),
            Err(Denied::Outside(_))
        ));
        let reader = header("bearer reader-token");
        assert_eq!(tokens.check(Some(&reader), Need::Key(b"config/a", Access::Read)), Ok(()));
        assert_eq!(tokens.check(Some(&reader), Need::Key(b"a b/c", Access::Read)), Ok(()), "percent-decoded");
        assert!(matches!(
            tokens.check(Some(&reader), Need::Key(b"config/a", Access::Write)),
            Err(Denied::Outside(_))
        ));
        let ops = header("Bearer ops-token");
        assert_eq!(tokens.check(Some(&ops), Need::Prefix(b"", Access::Write)), Ok(()));
    }

    #[test]
    fn a_prefix_listing_needs_a_grant_covering_all_of_it() {
        let tokens = Tokens::parse(FILE).unwrap();
        let app = header("Bearer app-token");
        assert_eq!(tokens.check(Some(&app), Need::Prefix(b"app/sub/", Access::Read)), Ok(()));
        assert!(
            tokens.check(Some(&app), Need::Prefix(b"app", Access::Read)).is_err(),
            "app covers more than app/"
        );
        assert!(tokens.check(Some(&app), Need::Prefix(b"", Access::Read)).is_err());
    }

    #[test]
    fn missing_and_unknown_tokens_are_told_apart_and_health_needs_none() {
        let tokens = Tokens::parse(FILE).unwrap();
        assert_eq!(tokens.check(None, Need::AnyToken), Err(Denied::Missing));
        assert_eq!(tokens.check(Some(&header("Basic b3BzOng=")), Need::AnyToken), Err(Denied::Missing));
        assert_eq!(tokens.check(Some(&header("Bearer ")), Need::AnyToken), Err(Denied::Missing));
        assert_eq!(tokens.check(Some(&header("Bearer ops-tokeN")), Need::AnyToken), Err(Denied::Invalid));
        assert_eq!(tokens.check(Some(&header("Bearer ops-token2")), Need::AnyToken), Err(Denied::Invalid));
        assert_eq!(tokens.check(Some(&header("Bearer ops")), Need::AnyToken), Err(Denied::Invalid));
        assert_eq!(tokens.check(None, Need::Nothing), Ok(()));
        assert_eq!(tokens.check(Some(&header("Bearer reader-token")), Need::AnyToken), Ok(()));
    }

    #[test]
    fn bad_lines_are_refused_naming_the_line_and_never_the_token() {
        for (text, line) in [
            ("secret-one writ\n", "line 1"),
            ("# c\n\nsecret-one\n", "line 3"),
            ("secret-one read a b\n", "line 1"),
            ("secret-one read %zz\n", "line 1"),
            ("s\u{e9}cret read\n", "line 1"),
        ] {
            let error = Tokens::parse(text).unwrap_err();
            assert!(error.starts_with(line), "{text:?}: {error}");
            assert!(!error.contains("secret"), "the error shows the token: {error}");
        }
        assert!(Tokens::parse("# only comments\n\n").is_err());
    }

    #[test]
    fn a_file_readable_by_others_is_refused_and_a_reload_keeps_the_old_tokens_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "t1 read\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Auth::load(&path).unwrap_err().contains("0644"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let auth = Auth::load(&path).unwrap();
        assert_eq!(auth.tokens().check(Some(&header("Bearer t1")), Need::AnyToken), Ok(()));

        std::fs::write(&path, "t2 write\n").unwrap();
        assert_eq!(auth.reload(), Ok(1));
        assert_eq!(auth.tokens().check(Some(&header("Bearer t1")), Need::AnyToken), Err(Denied::Invalid));
        assert_eq!(auth.tokens().check(Some(&header("Bearer t2")), Need::AnyToken), Ok(()));

        std::fs::write(&path, "t3 sometimes\n").unwrap();
        assert!(auth.reload().is_err());
        assert_eq!(
            auth.tokens().check(Some(&header("Bearer t2")), Need::AnyToken),
            Ok(()),
            "old tokens kept"
        );
    }
}
