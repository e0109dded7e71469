//! The commands a list takes by mail, at `name-request@domain` (in the subject or in the
//! first lines of the body) and, as MailEnable does, at the list address itself when the
//! subject is nothing but a command.

/// One command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    /// `subscribe`, or `subscribe ADDRESS` (the code then goes to that address).
    Subscribe(Option<String>),
    Unsubscribe(Option<String>),
    /// `confirm CODE`: a subscription or unsubscription asked for earlier.
    Confirm(String),
    /// `approve CODE`: a held post is distributed (anyone who has the code: it went to
    /// the moderators only).
    Approve(String),
    /// `reject CODE [reason]`: a held post is dropped and its poster told.
    Reject(String, String),
}

/// Most body lines read for commands.
const MAX_BODY_LINES: usize = 20;

/// The commands of a request: the body's leading command lines (quoted lines and blank
/// lines skipped; reading stops at the first line that is not a command, such as a
/// signature), then the subject's. A reply's `Re:` and the like are skipped. At most one
/// command per code, the first given: a moderator who writes `reject CODE` in the body of
/// a reply whose subject says `approve CODE` rejects.
pub fn parse(subject: &str, body: &str) -> Vec<Command> {
    let mut out: Vec<Command> = Vec::new();
    for line in body.lines().take(MAX_BODY_LINES) {
        let t = line.trim();
        if t.is_empty() || t.starts_with('>') {
            continue;
        }
        match parse_line(t) {
            Some(c) => push(&mut out, c),
            None => break,
        }
    }
    if let Some(c) = parse_subject(subject) {
        push(&mut out, c);
    }
    out
}

fn push(out: &mut Vec<Command>, c: Command) {
    let code = |c: &Command| match c {
        Command::Confirm(x) | Command::Approve(x) | Command::Reject(x, _) => Some(x.clone()),
        _ => None,
    };
    let dup = out.iter().any(|o| o == &c || (code(o).is_some() && code(o) == code(&c)));
    if !dup {
        out.push(c);
    }
}

/// The command a subject holds: the whole subject once reply and forward markers (`Re:`,
/// `Fwd:`, `AW:`…) and list prefixes (`[name]`) are taken off, or a `confirm|approve|reject
/// CODE` anywhere in it (the notices we send put it at the end).
pub fn parse_subject(subject: &str) -> Option<Command> {
    let mut s = subject.trim();
    loop {
        let lower = s.to_ascii_lowercase();
        let marker = ["re:", "fwd:", "fw:", "aw:", "sv:", "wg:"].iter().find(|m| lower.starts_with(**m));
        if let Some(m) = marker {
            s = s[m.len()..].trim_start();
        } else if s.starts_with('[')
            && let Some(end) = s.find(']')
        {
            s = s[end + 1..].trim_start();
        } else {
            break;
        }
    }
    if let Some(c) = parse_line(s) {
        return Some(c);
    }
    let words: Vec<&str> = subject.split_whitespace().collect();
    words.windows(2).find_map(|w| match w[0].to_ascii_lowercase().as_str() {
        "confirm" | "approve" | "reject" if is_code(w[1]) => parse_line(&format!("{} {}", w[0], w[1])),
        _ => None,
    })
}

/// A code is what we make: hexadecimal digits, 16 of them.
pub fn is_code(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_line(line: &str) -> Option<Command> {
    let mut words = line.split_whitespace();
    let verb = words.next()?.to_ascii_lowercase();
    let arg = words.next();
    let rest: Vec<&str> = words.collect();
    let address = |a: Option<&str>| -> Option<Option<String>> {
        match a {
            None => Some(None),
            Some(a) => {
                let a = a.trim_matches(|c| c == '<' || c == '>');
                crate::directory::model::normalize_address(a).ok().map(Some)
            }
        }
    };
    match verb.as_str() {
        "help" if arg.is_none() => Some(Command::Help),
        "subscribe" | "join" if rest.is_empty() => address(arg).map(Command::Subscribe),
        "unsubscribe" | "leave" | "signoff" if rest.is_empty() => address(arg).map(Command::Unsubscribe),
        "confirm" if rest.is_empty() => arg.filter(|c| is_code(c)).map(|c| Command::Confirm(c.to_ascii_lowercase())),
        "approve" if rest.is_empty() => arg.filter(|c| is_code(c)).map(|c| Command::Approve(c.to_ascii_lowercase())),
        "reject" => arg.filter(|c| is_code(c)).map(|c| Command::Reject(c.to_ascii_lowercase(), rest.join(" "))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "0123456789abcdef";

    #[test]
    fn subject_commands_with_reply_markers_and_prefixes() {
        assert_eq!(parse_subject("help"), Some(Command::Help));
        assert_eq!(parse_subject("  SUBSCRIBE "), Some(Command::Subscribe(None)));
        assert_eq!(parse_subject("Re: [dev] unsubscribe"), Some(Command::Unsubscribe(None)));
        assert_eq!(
            parse_subject("Re: Your subscription to dev@example.org: confirm 0123456789ABCDEF"),
            Some(Command::Confirm(CODE.into()))
        );
        assert_eq!(
            parse_subject("subscribe Ann@Example.org"),
            Some(Command::Subscribe(Some("ann@example.org".into())))
        );
        assert_eq!(parse_subject("help me with my printer"), None);
        assert_eq!(parse_subject("confirm 123"), None, "not one of our codes");
    }

    #[test]
    fn body_lines_first_then_subject_and_one_command_per_code() {
        let body = format!("\r\nreject {CODE} off topic\r\n-- \r\nAnn\r\n> approve {CODE}\r\n");
        let got = parse(&format!("Re: Held post: approve {CODE}"), &body);
        assert_eq!(got, vec![Command::Reject(CODE.into(), "off topic".into())]);
        let got = parse(&format!("Re: Held post: approve {CODE}"), "> quoted\r\nThanks!\r\n");
        assert_eq!(got, vec![Command::Approve(CODE.into())]);
        assert_eq!(parse("", "subscribe\nhelp\n"), vec![Command::Subscribe(None), Command::Help]);
    }
}
