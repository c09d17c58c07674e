//! A checker for Asterisk's configuration dialect, since no Asterisk runs where the tests do:
//! the syntax every `.conf` file shares (sections, templates, `key = value`, `key => value`),
//! then what PJSIP and the dialplan need of it (sections of known types that reference
//! sections that exist; extensions that start at priority 1, call known applications and jump
//! to labels that exist).

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, ensure, Context as _};

/// One `[section]`, with the entries of the templates it inherits resolved in front of its own.
#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    /// `(!)`: a template, not an object of its own.
    pub is_template: bool,
    /// `key`, value, and whether it was written `=>`, in order (inherited ones first).
    pub entries: Vec<(String, String, bool)>,
    pub line: usize,
}

impl Section {
    /// The last value of `key` (later entries override earlier ones, as in Asterisk).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, _)| v.as_str())
    }
}

/// Parses one file of the dialect. Errors name the line.
pub fn parse(text: &str) -> anyhow::Result<Vec<Section>> {
    let mut sections: Vec<Section> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("line {number}: {raw:?}");
        if line.starts_with('#') {
            bail!("{}: #include / #exec are not used here", at());
        }
        if let Some(rest) = line.strip_prefix('[') {
            let (name, options) = rest
                .split_once(']')
                .with_context(|| format!("{}: no ]", at()))?;
            ensure!(!name.trim().is_empty(), "{}: empty section name", at());
            let mut section = Section {
                name: name.trim().to_string(),
                is_template: false,
                entries: Vec::new(),
                line: number,
            };
            let options = options.trim();
            if !options.is_empty() {
                let inner = options
                    .strip_prefix('(')
                    .and_then(|o| o.strip_suffix(')'))
                    .with_context(|| format!("{}: expected (options) after ]", at()))?;
                for option in inner.split(',').map(str::trim) {
                    if option == "!" {
                        section.is_template = true;
                        continue;
                    }
                    // A section inherits from one written before it, by name.
                    let parent = sections
                        .iter()
                        .rev()
                        .find(|s| s.name == option && s.is_template)
                        .with_context(|| format!("{}: no template [{option}](!) before", at()))?;
                    section.entries.extend(parent.entries.iter().cloned());
                }
            }
            sections.push(section);
            continue;
        }
        let section = sections
            .last_mut()
            .with_context(|| format!("{}: an entry before any [section]", at()))?;
        let (key, value, arrow) = match (line.find("=>"), line.find('=')) {
            (Some(arrow), Some(equals)) if arrow == equals => {
                (&line[..arrow], &line[arrow + 2..], true)
            }
            (_, Some(equals)) => (&line[..equals], &line[equals + 1..], false),
            _ => bail!("{}: expected key = value or key => value", at()),
        };
        let key = key.trim();
        ensure!(
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
            "{}: bad key {key:?}",
            at()
        );
        section
            .entries
            .push((key.to_string(), value.trim().to_string(), arrow));
    }
    Ok(sections)
}

/// The line without its `;` comment (`\;` is a literal semicolon).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b';' && (i == 0 || bytes[i - 1] != b'\\') {
            return &line[..i];
        }
    }
    line
}

/// PJSIP objects by (type, name), templates left out.
#[derive(Debug)]
pub struct Pjsip {
    pub objects: BTreeMap<(String, String), Section>,
}

impl Pjsip {
    /// The objects of one type (`endpoint`, `auth`, ...).
    pub fn of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Section> + 'a {
        self.objects
            .iter()
            .filter(move |((k, _), _)| k == kind)
            .map(|(_, section)| section)
    }

    fn has(&self, kind: &str, name: &str) -> bool {
        self.objects
            .contains_key(&(kind.to_string(), name.to_string()))
    }
}

const PJSIP_TYPES: &[&str] = &[
    "global",
    "system",
    "transport",
    "endpoint",
    "auth",
    "aor",
    "identify",
    "registration",
    "domain_alias",
    "acl",
    "contact",
    "outbound-publish",
    "inbound-publication",
    "resource_list",
];

const PJSIP_BOOLEANS: &[&str] = &[
    "direct_media",
    "rtp_symmetric",
    "force_rport",
    "rewrite_contact",
    "remove_existing",
    "ice_support",
    "use_avpf",
    "webrtc",
    "trust_id_inbound",
    "send_pai",
    "allow_unauthenticated_options",
];

/// Checks a pjsip.conf: every object has a known type and is defined once; endpoints name
/// auths, aors and transports that exist and a valid `dtmf_mode`; auths have a user name and
/// password; transports a protocol and a bind address.
pub fn check_pjsip(sections: &[Section]) -> anyhow::Result<Pjsip> {
    let mut objects = BTreeMap::new();
    for section in sections.iter().filter(|s| !s.is_template) {
        let at = || format!("[{}] (line {})", section.name, section.line);
        let kind = section
            .get("type")
            .with_context(|| format!("{}: no type", at()))?;
        ensure!(
            PJSIP_TYPES.contains(&kind),
            "{}: unknown type {kind:?}",
            at()
        );
        for (key, value, _) in &section.entries {
            if PJSIP_BOOLEANS.contains(&key.as_str()) {
                ensure!(
                    ["yes", "no", "true", "false", "on", "off", "1", "0"].contains(&value.as_str()),
                    "{}: {key} = {value:?} is not a boolean",
                    at()
                );
            }
        }
        let key = (kind.to_string(), section.name.clone());
        ensure!(
            !objects.contains_key(&key),
            "{}: a second {kind} of this name",
            at()
        );
        objects.insert(key, section.clone());
    }
    let pjsip = Pjsip { objects };
    for endpoint in pjsip.of_type("endpoint") {
        let at = format!("endpoint [{}]", endpoint.name);
        for (key, kind) in [
            ("auth", "auth"),
            ("outbound_auth", "auth"),
            ("aors", "aor"),
            ("transport", "transport"),
        ] {
            for name in list(endpoint.get(key)) {
                ensure!(
                    pjsip.has(kind, name),
                    "{at}: {key} names no {kind} section [{name}]"
                );
            }
        }
        if let Some(mode) = endpoint.get("dtmf_mode") {
            ensure!(
                ["rfc4733", "inband", "info", "auto", "auto_info"].contains(&mode),
                "{at}: dtmf_mode {mode:?}"
            );
        }
    }
    for auth in pjsip.of_type("auth") {
        let at = format!("auth [{}]", auth.name);
        ensure!(
            auth.get("username").is_some_and(|u| !u.is_empty()),
            "{at}: no username"
        );
        ensure!(
            auth.get("password").is_some_and(|p| !p.is_empty()),
            "{at}: no password"
        );
    }
    for transport in pjsip.of_type("transport") {
        let at = format!("transport [{}]", transport.name);
        let protocol = transport.get("protocol").unwrap_or("udp");
        ensure!(
            ["udp", "tcp", "tls", "ws", "wss", "flow"].contains(&protocol),
            "{at}: protocol {protocol:?}"
        );
        let bind = transport
            .get("bind")
            .with_context(|| format!("{at}: no bind"))?;
        ensure!(
            bind.parse::<std::net::SocketAddr>().is_ok(),
            "{at}: bind {bind:?} is not IP:port"
        );
    }
    Ok(pjsip)
}

/// A comma-separated list setting, empty when unset.
pub fn list(value: Option<&str>) -> impl Iterator<Item = &str> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// One dialplan extension: its pattern and its steps (priority label, application, arguments).
#[derive(Debug, Clone)]
pub struct Extension {
    pub pattern: String,
    pub steps: Vec<(Option<String>, String, String)>,
}

/// Dialplan applications this checker knows (Asterisk 22 core): a typo is an error.
const APPLICATIONS: &[&str] = &[
    "Answer",
    "Playback",
    "Background",
    "Echo",
    "Hangup",
    "Read",
    "SayDigits",
    "SayNumber",
    "Goto",
    "GotoIf",
    "Dial",
    "NoOp",
    "Wait",
    "WaitExten",
    "Set",
    "Progress",
    "Ringing",
    "Congestion",
    "Busy",
    "Verbose",
    "Log",
    "Return",
    "Gosub",
    "SendDTMF",
    "ReceiveFAX",
];

/// Checks an extensions.conf: every context holds `exten =>` / `same =>` / `include =>`
/// lines; each extension starts at priority 1, calls known applications, and its Goto /
/// GotoIf labels exist. Returns the extensions by context.
pub fn check_dialplan(sections: &[Section]) -> anyhow::Result<BTreeMap<String, Vec<Extension>>> {
    let mut contexts = BTreeMap::new();
    for section in sections {
        if ["general", "globals"].contains(&section.name.as_str()) {
            continue;
        }
        let mut extensions: Vec<Extension> = Vec::new();
        for (key, value, arrow) in &section.entries {
            let at = || format!("[{}] {key} => {value}", section.name);
            ensure!(*arrow, "{}: dialplan lines use =>", at());
            let (pattern, rest) = match key.as_str() {
                "exten" => {
                    let (pattern, rest) = value
                        .split_once(',')
                        .with_context(|| format!("{}: no priority", at()))?;
                    (Some(pattern.trim()), rest)
                }
                "same" => (None, value.as_str()),
                "include" | "ignorepat" | "switch" => continue,
                other => bail!("{}: unknown dialplan keyword {other:?}", at()),
            };
            let (priority, step) = rest
                .split_once(',')
                .with_context(|| format!("{}: no application", at()))?;
            let (label, first) = parse_priority(priority.trim()).with_context(at)?;
            let (application, arguments) = parse_application(step.trim()).with_context(at)?;
            ensure!(
                APPLICATIONS.contains(&application.as_str()),
                "{}: unknown application {application:?}",
                at()
            );
            match pattern {
                Some(pattern) => {
                    let continues = extensions.last().is_some_and(|e| e.pattern == pattern);
                    if !continues {
                        ensure!(first, "{}: an extension starts at priority 1", at());
                        extensions.push(Extension {
                            pattern: pattern.to_string(),
                            steps: Vec::new(),
                        });
                    }
                }
                None => ensure!(
                    !extensions.is_empty() && !first,
                    "{}: same => must follow exten => with priority n",
                    at()
                ),
            }
            if let Some(extension) = extensions.last_mut() {
                extension.steps.push((label, application, arguments));
            }
        }
        for extension in &extensions {
            let labels: HashSet<&str> = extension
                .steps
                .iter()
                .filter_map(|(l, _, _)| l.as_deref())
                .collect();
            for (_, application, arguments) in &extension.steps {
                for target in jump_labels(application, arguments) {
                    ensure!(
                        labels.contains(target) || target.chars().all(|c| c.is_ascii_digit()),
                        "[{}] {}: {application} to unknown label {target:?}",
                        section.name,
                        extension.pattern
                    );
                }
            }
        }
        contexts.insert(section.name.clone(), extensions);
    }
    Ok(contexts)
}

/// (label, whether it is priority 1) of `1`, `n`, `n(label)`, `1(label)`.
fn parse_priority(priority: &str) -> anyhow::Result<(Option<String>, bool)> {
    let (number, label) = match priority.split_once('(') {
        Some((number, label)) => (
            number,
            Some(
                label
                    .strip_suffix(')')
                    .context("unclosed priority label")?
                    .to_string(),
            ),
        ),
        None => (priority, None),
    };
    match number {
        "n" => Ok((label, false)),
        "1" => Ok((label, true)),
        digits if digits.chars().all(|c| c.is_ascii_digit()) && !digits.is_empty() => {
            Ok((label, false))
        }
        other => bail!("bad priority {other:?}"),
    }
}

/// `App(arguments)` or `App`.
fn parse_application(step: &str) -> anyhow::Result<(String, String)> {
    let (name, arguments) = match step.split_once('(') {
        Some((name, rest)) => (name, rest.strip_suffix(')').context("unclosed (")?),
        None => (step, ""),
    };
    let balance = arguments.chars().try_fold(0i32, |depth, c| {
        let depth = depth + i32::from(c == '(') - i32::from(c == ')');
        (depth >= 0).then_some(depth)
    });
    ensure!(balance == Some(0), "unbalanced parentheses in {step:?}");
    ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
        "bad application {name:?}"
    );
    Ok((name.to_string(), arguments.to_string()))
}

/// The labels a Goto(label) or GotoIf(cond?label:label) of the same extension jumps to.
fn jump_labels<'a>(application: &str, arguments: &'a str) -> Vec<&'a str> {
    let targets = match application {
        "Goto" => arguments,
        "GotoIf" => arguments.rsplit_once('?').map_or("", |(_, t)| t),
        _ => return Vec::new(),
    };
    // Only a bare label (no context or extension part) names one of this extension's.
    targets
        .split(':')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.contains(','))
        .collect()
}

/// Whether the dialplan pattern (`600`, `_100[1-4]`, `_X.`) matches `number`.
pub fn pattern_matches(pattern: &str, number: &str) -> bool {
    let Some(pattern) = pattern.strip_prefix('_') else {
        return pattern == number;
    };
    let mut digits = number.chars();
    let mut rest = pattern.chars();
    while let Some(p) = rest.next() {
        match p {
            '.' => return digits.next().is_some(),
            '!' => return true,
            _ => {}
        }
        let Some(d) = digits.next() else { return false };
        let ok = match p {
            'X' | 'x' => d.is_ascii_digit(),
            'Z' | 'z' => ('1'..='9').contains(&d),
            'N' | 'n' => ('2'..='9').contains(&d),
            '[' => {
                let class: String = rest.by_ref().take_while(|c| *c != ']').collect();
                let chars: Vec<char> = class.chars().collect();
                let mut hit = false;
                let mut i = 0;
                while i < chars.len() {
                    if i + 2 < chars.len() && chars[i + 1] == '-' {
                        hit |= (chars[i]..=chars[i + 2]).contains(&d);
                        i += 3;
                    } else {
                        hit |= chars[i] == d;
                        i += 1;
                    }
                }
                hit
            }
            literal => literal == d,
        };
        if !ok {
            return false;
        }
    }
    digits.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_resolve_and_mistakes_are_found() -> anyhow::Result<()> {
        let sections = parse(
            "[t](!)\ntype = endpoint\ndtmf_mode = info\n[a](t)\ndtmf_mode = rfc4733 ; comment\naors = a\n[a]\ntype = aor\n",
        )?;
        let pjsip = check_pjsip(&sections)?;
        let endpoint = pjsip.of_type("endpoint").next().context("no endpoint")?;
        assert_eq!(endpoint.get("dtmf_mode"), Some("rfc4733"));
        assert!(parse("key = value\n").is_err(), "entry before a section");
        assert!(parse("[a](missing)\n").is_err(), "unknown template");
        assert!(parse("[a]\njust words\n").is_err());
        assert!(check_pjsip(&parse("[e]\ntype = endpoint\nauth = nope\n")?).is_err());
        assert!(check_pjsip(&parse("[e]\ntype = endpoint\ndirect_media = maybe\n")?).is_err());
        Ok(())
    }

    #[test]
    fn dialplan_checks_priorities_applications_and_labels() -> anyhow::Result<()> {
        let good = "[c]\nexten => 1,1,Answer()\n same => n(top),Read(D,beep,1)\n same => n,GotoIf($[\"${D}\" = \"\"]?top:end)\n same => n(end),Hangup()\n";
        let contexts = check_dialplan(&parse(good)?)?;
        assert_eq!(contexts["c"][0].steps.len(), 4);
        assert!(check_dialplan(&parse("[c]\nexten => 1,2,Answer()\n")?).is_err());
        assert!(check_dialplan(&parse("[c]\nexten => 1,1,Playbak(x)\n")?).is_err());
        assert!(check_dialplan(&parse("[c]\nexten => 1,1,Goto(nowhere)\n")?).is_err());
        assert!(check_dialplan(&parse("[c]\n same => n,Answer()\n")?).is_err());
        Ok(())
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("_100[1-4]", "1003"));
        assert!(!pattern_matches("_100[1-4]", "1005"));
        assert!(pattern_matches("_X.", "42"));
        assert!(!pattern_matches("_X.", "4"));
        assert!(pattern_matches("600", "600"));
        assert!(!pattern_matches("_NXX", "123"));
    }
}
