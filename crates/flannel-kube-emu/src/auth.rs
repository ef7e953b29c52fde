//! Authentication as the API server does it for bearer tokens: kube-apiserver's static token
//! file (`--token-auth-file`) and ServiceAccount tokens issued by the TokenRequest API
//! (`POST .../serviceaccounts/<name>/token`), plus the anonymous user.
//!
//! ServiceAccount tokens here are **opaque random strings** (43 URL-safe characters), not the
//! JWTs a real cluster signs: clients send them back unread, so only the server's bookkeeping
//! matters. A token stops working when it expires, when its ServiceAccount is deleted (or
//! replaced by a new one of the same name: the uid is bound, as in a real token), or when a
//! test revokes it. As on the real server a request is authenticated once, when it starts:
//! an open watch outlives its token.
//!
//! Every authenticated user is also in `system:authenticated`; the anonymous user is
//! `system:anonymous` in `system:unauthenticated`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::Rng;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of the anonymous user.
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The anonymous user's name.
pub const ANONYMOUS: &str = "system:anonymous";
/// The group that may do anything (bound to `cluster-admin`) and use the `/emu/` controls.
pub const MASTERS: &str = "system:masters";

/// Who a request comes from, as the authorizer sees it (`user.Info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// The user name (`kubernetes-admin`, `system:serviceaccount:<ns>:<name>`).
    pub name: String,
    /// The user's uid (a ServiceAccount's object uid for its tokens).
    pub uid: String,
    /// The groups, `system:authenticated` included once authenticated.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The anonymous user (`--anonymous-auth=true` and no credentials).
    pub fn anonymous() -> UserInfo {
        UserInfo {
            name: ANONYMOUS.to_string(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED.to_string()],
        }
    }

    /// The user of ServiceAccount `name` in `namespace`, as its tokens authenticate.
    pub fn service_account(namespace: &str, name: &str, uid: &str) -> UserInfo {
        UserInfo {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            uid: uid.to_string(),
            groups: vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{namespace}"),
                AUTHENTICATED.to_string(),
            ],
        }
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    fn authenticated(mut self) -> UserInfo {
        if !self.in_group(AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.to_string());
        }
        self
    }
}

/// One line of a static token file: the token and the user it authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticToken {
    /// The bearer token.
    pub token: String,
    /// Its user (name, uid, groups as written in the file).
    pub user: UserInfo,
}

/// A static token file that cannot be used; the server refuses to start, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("reading the token file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A record has fewer than three fields (kube-apiserver's wording).
    #[error(
        "token file '{path}' must have at least 3 columns (token, user name, user uid), found {found}"
    )]
    Columns {
        /// The file.
        path: PathBuf,
        /// How many fields the record had.
        found: usize,
    },
    /// A quoted field is not closed.
    #[error("token file '{path}': record {record}: unterminated quoted field")]
    Quote {
        /// The file.
        path: PathBuf,
        /// The record's number (from 1).
        record: usize,
    },
}

/// Splits CSV text into records as Go's `encoding/csv` does for the token file: fields
/// separated by commas, `"..."` quoting with `""` for a quote, leading spaces of a field
/// trimmed, blank lines skipped. `Err(n)` names an unterminated quote in record `n`.
fn csv_records(text: &str) -> Result<Vec<Vec<String>>, usize> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut record: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut at_field_start = true;
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            ' ' | '\t' if at_field_start => {}
            '"' if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                at_field_start = true;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                if !(record.is_empty() && field.is_empty() && at_field_start) {
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                at_field_start = true;
            }
            c => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err(records.len() + 1);
    }
    if !(record.is_empty() && field.is_empty() && at_field_start) {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// Parses a static token file's text (`token,user,uid[,"group1,group2"]` per line, as
/// kube-apiserver's `--token-auth-file`); `path` only names the file in errors. Records with
/// an empty token are skipped, as the API server skips them (with a warning).
pub fn parse_token_file(path: &Path, text: &str) -> Result<Vec<StaticToken>, TokenFileError> {
    let records = csv_records(text).map_err(|record| TokenFileError::Quote {
        path: path.to_path_buf(),
        record,
    })?;
    let mut tokens = Vec::new();
    for record in records {
        if record.len() < 3 {
            return Err(TokenFileError::Columns {
                path: path.to_path_buf(),
                found: record.len(),
            });
        }
        if record[0].is_empty() {
            tracing::warn!("empty token found in token file '{}'", path.display());
            continue;
        }
        let groups = match record.get(3) {
            Some(g) => g.split(',').map(str::to_string).collect(),
            None => Vec::new(),
        };
        tokens.push(StaticToken {
            token: record[0].clone(),
            user: UserInfo {
                name: record[1].clone(),
                uid: record[2].clone(),
                groups,
            },
        });
    }
    Ok(tokens)
}

/// Reads and parses a static token file (see [`parse_token_file`]).
pub fn read_token_file(path: &Path) -> Result<Vec<StaticToken>, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_token_file(path, &text)
}

/// A ServiceAccount token the emulator issued.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Issued {
    namespace: String,
    name: String,
    /// The ServiceAccount's uid when the token was issued: a new account of the same name
    /// does not inherit the token.
    uid: String,
    expires: SystemTime,
}

/// Every token the server knows: the static ones, those it issued, and the revoked ones.
#[derive(Debug, Default)]
pub struct Tokens {
    fixed: HashMap<String, UserInfo>,
    issued: HashMap<String, Issued>,
    revoked: HashSet<String>,
}

impl Tokens {
    /// Tokens from a static token file; a token listed twice keeps its last line, as on the
    /// API server.
    pub fn new(fixed: &[StaticToken]) -> Tokens {
        Tokens {
            fixed: fixed
                .iter()
                .map(|t| (t.token.clone(), t.user.clone()))
                .collect(),
            ..Tokens::default()
        }
    }

    /// Issues a new token for ServiceAccount `namespace/name` (whose object uid is `uid`),
    /// valid until `expires`.
    pub fn issue(&mut self, namespace: &str, name: &str, uid: &str, expires: SystemTime) -> String {
        // Expired tokens are forgotten here, so a long run does not accumulate them.
        let now = SystemTime::now();
        self.issued.retain(|_, issued| issued.expires > now);
        let token: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(43)
            .map(char::from)
            .collect();
        self.issued.insert(
            token.clone(),
            Issued {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
                expires,
            },
        );
        token
    }

    /// Revokes `token` (static or issued); `false` if the server never knew it.
    pub fn revoke(&mut self, token: &str) -> bool {
        let known = self.fixed.contains_key(token) || self.issued.contains_key(token);
        if known {
            self.revoked.insert(token.to_string());
        }
        known
    }

    /// The user `token` authenticates at `now`; `account_uid(ns, name)` is the uid of the
    /// ServiceAccount as stored now (`None` once deleted). `None`: 401.
    pub fn authenticate(
        &self,
        token: &str,
        now: SystemTime,
        account_uid: impl Fn(&str, &str) -> Option<String>,
    ) -> Option<UserInfo> {
        if self.revoked.contains(token) {
            return None;
        }
        if let Some(user) = self.fixed.get(token) {
            return Some(user.clone().authenticated());
        }
        let issued = self.issued.get(token)?;
        if now >= issued.expires {
            return None;
        }
        if account_uid(&issued.namespace, &issued.name).as_deref() != Some(issued.uid.as_str()) {
            return None;
        }
        Some(UserInfo::service_account(
            &issued.namespace,
            &issued.name,
            &issued.uid,
        ))
    }
}

/// The bearer token of an `Authorization` header value, as the API server reads it: scheme
/// `Bearer` in any case, then the token; anything else (`Basic ...`, an empty token) is no
/// credential at all.
pub fn bearer_token(header: &str) -> Option<&str> {
    let mut parts = header.splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The TokenRequest API's bounds on `spec.expirationSeconds`: at least 10 minutes, at most
/// 2^32 seconds; unset is one hour.
pub fn token_lifetime(expiration_seconds: Option<i64>) -> Result<Duration, &'static str> {
    match expiration_seconds {
        None => Ok(Duration::from_secs(3600)),
        Some(s) if s < 600 => Err("may not specify a duration less than 10 minutes"),
        Some(s) if s > 1 << 32 => Err("may not specify a duration larger than 2^32 seconds"),
        Some(s) => Ok(Duration::from_secs(s.unsigned_abs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_as_kube_apiserver_reads_it() {
        let text = "admin-token,kubernetes-admin,kubernetes-admin,\"system:masters\"\n\
                    \n\
                    t2, bob ,u2,\"g1,g2\"\r\n\
                    ,skipped,u3\n\
                    t4,carol,u4";
        let tokens = parse_token_file(Path::new("/f.csv"), text).unwrap();
        assert_eq!(tokens.len(), 3);
        assert_eq!(tokens[0].token, "admin-token");
        assert_eq!(tokens[0].user.name, "kubernetes-admin");
        assert_eq!(tokens[0].user.groups, ["system:masters"]);
        assert_eq!(tokens[1].user.name, "bob ");
        assert_eq!(tokens[1].user.groups, ["g1", "g2"]);
        assert!(tokens[2].user.groups.is_empty());
        let e = parse_token_file(Path::new("/f.csv"), "a,b\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "token file '/f.csv' must have at least 3 columns (token, user name, user uid), found 2"
        );
        let e = parse_token_file(Path::new("/f.csv"), "a,b,c\n\"d,e").unwrap_err();
        assert_eq!(
            e.to_string(),
            "token file '/f.csv': record 2: unterminated quoted field"
        );
        assert_eq!(
            csv_records("a,\"b \"\"q\"\"\",c\n").unwrap(),
            [["a", "b \"q\"", "c"]]
        );
    }

    #[test]
    fn tokens_expire_are_revoked_and_die_with_their_account() {
        let admin = StaticToken {
            token: "adm".into(),
            user: UserInfo {
                name: "kubernetes-admin".into(),
                uid: "kubernetes-admin".into(),
                groups: vec![MASTERS.into()],
            },
        };
        let mut tokens = Tokens::new(&[admin]);
        let now = SystemTime::now();
        let uid = |want: &'static str| move |_: &str, _: &str| Some(want.to_string());
        let user = tokens.authenticate("adm", now, uid("x")).unwrap();
        assert_eq!(user.groups, [MASTERS, AUTHENTICATED]);
        let t = tokens.issue(
            "kube-flannel",
            "flannel",
            "u1",
            now + Duration::from_secs(60),
        );
        assert_eq!(t.len(), 43);
        let sa = tokens.authenticate(&t, now, uid("u1")).unwrap();
        assert_eq!(sa.name, "system:serviceaccount:kube-flannel:flannel");
        assert_eq!(
            sa.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:kube-flannel",
                AUTHENTICATED
            ]
        );
        // Expired, account gone, account recreated (new uid).
        assert!(
            tokens
                .authenticate(&t, now + Duration::from_secs(60), uid("u1"))
                .is_none()
        );
        assert!(tokens.authenticate(&t, now, |_, _| None).is_none());
        assert!(tokens.authenticate(&t, now, uid("u2")).is_none());
        assert!(tokens.authenticate("nope", now, uid("u1")).is_none());
        assert!(tokens.revoke(&t));
        assert!(tokens.authenticate(&t, now, uid("u1")).is_none());
        assert!(tokens.revoke("adm"));
        assert!(tokens.authenticate("adm", now, uid("x")).is_none());
        assert!(!tokens.revoke("never-issued"));
    }

    #[test]
    fn bearer_header_and_lifetimes() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(token_lifetime(None), Ok(Duration::from_secs(3600)));
        assert_eq!(token_lifetime(Some(600)), Ok(Duration::from_secs(600)));
        assert!(token_lifetime(Some(599)).is_err());
        assert!(token_lifetime(Some((1 << 32) + 1)).is_err());
    }
}
