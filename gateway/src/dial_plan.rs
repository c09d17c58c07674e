//! The dial plan: which bUris a client may call (`[calls] allow` / `deny`)
//! and, with a proxy, that no call names a host other than the ones the
//! gateway serves. Toll fraud is a client calling premium or foreign
//! numbers on the operator's bill; these rules are the operator's say.

use anyhow::bail;

/// Glob patterns on a call's target; see [`DialPlan::check`].
#[derive(Debug, Clone, Default)]
pub struct DialPlan {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

/// Why a target is refused, for the client's ERROR.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A `deny` pattern matched, or `allow` patterns exist and none did.
    NotAllowed,
    /// A proxy is configured and the target names another host.
    ForeignHost,
}

#[derive(Debug, Clone)]
struct Pattern {
    glob: String,
    /// Without `@` a pattern is about the user part alone.
    whole_address: bool,
}

impl DialPlan {
    pub fn new(allow: &[String], deny: &[String]) -> anyhow::Result<DialPlan> {
        let parse = |patterns: &[String]| {
            patterns
                .iter()
                .map(|glob| Pattern::new(glob))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        Ok(DialPlan {
            allow: parse(allow)?,
            deny: parse(deny)?,
        })
    }

    /// Checks an expanded target (`sip:user@host[:port][;params]`).
    /// `served_hosts`: with a proxy, the `host[:port]`s a target may name
    /// (the domain, the proxy); `None` without a proxy.
    pub fn check(&self, target: &str, served_hosts: Option<&[String]>) -> Result<(), Refusal> {
        let (user, host) = user_and_host(target);
        let matches = |pattern: &Pattern| match pattern.whole_address {
            true => glob_matches(&pattern.glob, &format!("{user}@{host}")),
            false => glob_matches(&pattern.glob, user),
        };
        if self.deny.iter().any(matches)
            || (!self.allow.is_empty() && !self.allow.iter().any(matches))
        {
            return Err(Refusal::NotAllowed);
        }
        if let Some(served) = served_hosts {
            if !served.iter().any(|served| same_host(served, &host)) {
                return Err(Refusal::ForeignHost);
            }
        }
        Ok(())
    }
}

impl Pattern {
    fn new(glob: &str) -> anyhow::Result<Pattern> {
        if glob.is_empty() || glob.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("dial plan pattern {glob:?} must be non-empty and without spaces");
        }
        Ok(Pattern {
            glob: glob.to_string(),
            whole_address: glob.contains('@'),
        })
    }
}

/// The user part and the lower-cased `host[:port]` of `sip:user@host;…`
/// (no user: the user part is empty).
fn user_and_host(target: &str) -> (&str, String) {
    let rest = target
        .strip_prefix("sips:")
        .or_else(|| target.strip_prefix("sip:"))
        .unwrap_or(target);
    let (user, host) = match rest.rsplit_once('@') {
        Some((user, host)) => (user, host),
        None => ("", rest),
    };
    // The user part may carry `;` parameters of its own (telephone-subscriber).
    let user = user.split(';').next().unwrap_or_default();
    let host = host.split([';', '?']).next().unwrap_or_default();
    (user, host.to_ascii_lowercase())
}

/// Hosts compare case-insensitively; a side without a port means 5060.
fn same_host(served: &str, host: &str) -> bool {
    let with_port = |h: &str| {
        let h = h.to_ascii_lowercase();
        let has_port = match h.rsplit_once(':') {
            // `[::1]` alone ends in `]`; `[::1]:5060` has a port.
            Some((head, port)) => {
                port.chars().all(|c| c.is_ascii_digit())
                    && (!head.contains(':') || head.ends_with(']'))
            }
            None => false,
        };
        if has_port {
            h
        } else {
            format!("{h}:5060")
        }
    };
    with_port(served) == with_port(host)
}

/// Which caller numbers (the user part of From) each user may claim:
/// `calls.caller_numbers`, user name (or `*`, everyone) to glob patterns.
#[derive(Debug, Clone, Default)]
pub struct CallerNumbers(std::collections::BTreeMap<String, Vec<String>>);

impl CallerNumbers {
    pub fn new(patterns: &std::collections::BTreeMap<String, Vec<String>>) -> anyhow::Result<Self> {
        for glob in patterns.values().flatten() {
            Pattern::new(glob)?;
        }
        Ok(CallerNumbers(patterns.clone()))
    }

    pub fn allows(&self, user: &str, number: &str) -> bool {
        [user, "*"]
            .iter()
            .filter_map(|key| self.0.get(*key))
            .flatten()
            .any(|glob| glob_matches(glob, number))
    }
}

/// `*` any run of characters, `?` exactly one; the rest literally,
/// ASCII case-insensitively.
fn glob_matches(glob: &str, text: &str) -> bool {
    let glob: Vec<char> = glob.to_ascii_lowercase().chars().collect();
    let text: Vec<char> = text.to_ascii_lowercase().chars().collect();
    let (mut g, mut t) = (0, 0);
    // Where the last `*` was, and how much of the text it has taken.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some('*') => {
                star = Some((g, t));
                g += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match star {
                Some((star_g, star_t)) => {
                    g = star_g + 1;
                    t = star_t + 1;
                    star = Some((star_g, star_t + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(allow: &[&str], deny: &[&str]) -> DialPlan {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        DialPlan::new(&owned(allow), &owned(deny)).unwrap()
    }

    #[test]
    fn globs_match_whole_strings() {
        assert!(glob_matches("900*", "9001234"));
        assert!(!glob_matches("900*", "19001234"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("1?3", "123"));
        assert!(!glob_matches("1?3", "13"));
        assert!(glob_matches("*@PBX.example", "42@pbx.example"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxbyy"));
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let plan = plan(&["1*", "echo@*"], &["1900*"]);
        assert_eq!(plan.check("sip:1234@pbx", None), Ok(()));
        assert_eq!(plan.check("sip:echo@127.0.0.1:5060", None), Ok(()));
        assert_eq!(
            plan.check("sip:19005551234@pbx", None),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(plan.check("sip:2000@pbx", None), Err(Refusal::NotAllowed));
        // No rules: everything goes.
        assert_eq!(super::DialPlan::default().check("sip:x@y", None), Ok(()));
    }

    #[test]
    fn with_a_proxy_only_served_hosts() {
        let served = ["pbx.example".to_string(), "127.0.0.1:5070".to_string()];
        let plan = DialPlan::default();
        assert_eq!(
            plan.check("sip:3000@PBX.example:5060;user=phone", Some(&served)),
            Ok(())
        );
        assert_eq!(plan.check("sip:3000@127.0.0.1:5070", Some(&served)), Ok(()));
        assert_eq!(
            plan.check("sip:3000@127.0.0.1:5071", Some(&served)),
            Err(Refusal::ForeignHost)
        );
        assert_eq!(
            plan.check("sip:3000@evil.example", Some(&served)),
            Err(Refusal::ForeignHost)
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(DialPlan::new(&["".to_string()], &[]).is_err());
        assert!(DialPlan::new(&[], &["9 00*".to_string()]).is_err());
    }

    #[test]
    fn a_user_claims_only_the_numbers_listed_for_it_or_for_everyone() {
        let patterns = [
            ("alice".to_string(), vec!["+1555010?".to_string()]),
            ("*".to_string(), vec!["100".to_string()]),
        ]
        .into_iter()
        .collect();
        let numbers = CallerNumbers::new(&patterns).unwrap();
        assert!(numbers.allows("alice", "+15550101"));
        assert!(numbers.allows("alice", "100") && numbers.allows("bob", "100"));
        assert!(!numbers.allows("bob", "+15550101"));
        assert!(!numbers.allows("alice", "+155501011"));
        assert!(!CallerNumbers::default().allows("alice", "100"));
        let bad = [("x".to_string(), vec![" ".to_string()])]
            .into_iter()
            .collect();
        assert!(CallerNumbers::new(&bad).is_err());
    }
}
