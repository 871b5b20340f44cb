//! Configuration values as PostgreSQL and the shell parse them.
//!
//! `archive_command` and `restore_command` pass through two parsers: the
//! GUC file parser (quoted strings, `''` and backslash escapes) and then
//! `/bin/sh` (PostgreSQL runs the command through the shell). Paths with
//! spaces and quotes must survive both, so quoting lives here, tested.

/// Quotes one word for `/bin/sh`: plain words stay as they are, anything
/// else is single-quoted with `'` written as `'\''`.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-=:,%+@".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Joins words into a shell command line.
pub fn shell_join<S: AsRef<str>>(words: &[S]) -> String {
    words.iter().map(|w| shell_quote(w.as_ref())).collect::<Vec<_>>().join(" ")
}

/// Splits a shell command line into words (single and double quotes,
/// backslash escapes). `None` on an unterminated quote.
pub fn shell_split(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => cur.push(c),
                            c => {
                                cur.push('\\');
                                cur.push(c);
                            }
                        },
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

/// A piece of a shell command line as `/bin/sh` reads it (see
/// [`shell_tokens`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellToken {
    /// A word, its quotes removed. `expands`: it holds `$` outside single
    /// quotes, so its value is known only when the shell runs it.
    Word { text: String, expands: bool },
    /// A control operator: `&&`, `||`, `;` (a newline too), `&` or `|`.
    Op(&'static str),
    /// A redirection with its target (`>>/var/log/x`, `2>&1`): it does not
    /// change a command's exit status.
    Redirect(String),
}

/// Splits a shell command line into words, control operators and
/// redirections, the way `/bin/sh` does for simple command lists. Anything
/// beyond that (command substitution, subshells, here-documents, `;;`) is
/// an `Err` naming it: callers treat such a line as one they cannot read.
pub fn shell_tokens(line: &str) -> Result<Vec<ShellToken>, String> {
    struct Acc {
        out: Vec<ShellToken>,
        cur: String,
        in_word: bool,
        quoted: bool,
        expands: bool,
        redirect: Option<String>,
    }
    impl Acc {
        fn end_word(&mut self) {
            if !self.in_word {
                return;
            }
            let text = std::mem::take(&mut self.cur);
            match self.redirect.take() {
                Some(op) => self.out.push(ShellToken::Redirect(format!("{op}{text}"))),
                None => self.out.push(ShellToken::Word { text, expands: self.expands }),
            }
            self.in_word = false;
            self.quoted = false;
            self.expands = false;
        }
        fn op(&mut self, op: &'static str) -> Result<(), String> {
            self.end_word();
            if let Some(r) = &self.redirect {
                return Err(format!("redirection `{r}` has no target"));
            }
            self.out.push(ShellToken::Op(op));
            Ok(())
        }
    }
    let mut a =
        Acc { out: Vec::new(), cur: String::new(), in_word: false, quoted: false, expands: false, redirect: None };
    let mut chars = line.chars().peekable();
    let unterminated = |q: char| format!("unterminated {q} quote");
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                a.in_word = true;
                a.quoted = true;
                loop {
                    match chars.next().ok_or_else(|| unterminated('\''))? {
                        '\'' => break,
                        c => a.cur.push(c),
                    }
                }
            }
            '"' => {
                a.in_word = true;
                a.quoted = true;
                loop {
                    match chars.next().ok_or_else(|| unterminated('"'))? {
                        '"' => break,
                        '\\' => match chars.next().ok_or_else(|| unterminated('"'))? {
                            '\n' => {}
                            c @ ('"' | '\\' | '$' | '`') => a.cur.push(c),
                            c => {
                                a.cur.push('\\');
                                a.cur.push(c);
                            }
                        },
                        '`' => return Err("command substitution (`...`)".into()),
                        '$' if chars.peek() == Some(&'(') => return Err("command substitution $(...)".into()),
                        '$' => {
                            a.expands = true;
                            a.cur.push('$');
                        }
                        c => a.cur.push(c),
                    }
                }
            }
            '\\' => match chars.next() {
                // A line continuation.
                Some('\n') => {}
                Some(c) => {
                    a.in_word = true;
                    a.quoted = true;
                    a.cur.push(c);
                }
                None => return Err("a trailing backslash".into()),
            },
            '`' => return Err("command substitution (`...`)".into()),
            '$' => {
                if chars.peek() == Some(&'(') {
                    return Err("command substitution $(...)".into());
                }
                a.in_word = true;
                a.expands = true;
                a.cur.push('$');
                if chars.peek() == Some(&'{') {
                    loop {
                        match chars.next().ok_or("unterminated ${")? {
                            '}' => {
                                a.cur.push('}');
                                break;
                            }
                            c => a.cur.push(c),
                        }
                    }
                }
            }
            '#' if !a.in_word => {
                // A comment, to the end of the line.
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            ' ' | '\t' => a.end_word(),
            '\n' | ';' => {
                if c == ';' && chars.peek() == Some(&';') {
                    return Err("`;;`".into());
                }
                a.op(";")?;
            }
            '&' => {
                if chars.next_if_eq(&'&').is_some() {
                    a.op("&&")?;
                } else {
                    a.op("&")?;
                }
            }
            '|' => {
                if chars.next_if_eq(&'|').is_some() {
                    a.op("||")?;
                } else {
                    a.op("|")?;
                }
            }
            '(' | ')' => return Err("a subshell ( ... )".into()),
            '<' | '>' => {
                // Digits right before it are the file descriptor (`2>`).
                let mut op = String::new();
                if a.in_word && !a.quoted && !a.expands && a.cur.bytes().all(|b| b.is_ascii_digit()) {
                    op = std::mem::take(&mut a.cur);
                    a.in_word = false;
                } else {
                    a.end_word();
                }
                if a.redirect.is_some() {
                    return Err("a redirection without a target".into());
                }
                op.push(c);
                if c == '<' && chars.peek() == Some(&'<') {
                    return Err("a here-document (<<)".into());
                }
                if let Some(n) = chars.next_if(|&n| n == '>' || n == '&' || n == '|') {
                    op.push(n);
                }
                a.redirect = Some(op);
            }
            c => {
                a.in_word = true;
                a.cur.push(c);
            }
        }
    }
    a.end_word();
    if let Some(r) = a.redirect {
        return Err(format!("redirection `{r}` has no target"));
    }
    Ok(a.out)
}

/// A value quoted for a configuration file (`postgresql.conf`,
/// `postgresql.auto.conf`, `recovery.conf`): single quotes, with `'`
/// doubled and backslashes escaped, as the GUC file parser reads them.
pub fn guc_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', r"\\").replace('\'', "''"))
}

/// A string as an SQL literal (`standard_conforming_strings` on or off).
pub fn sql_literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', r"\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// Reads a quoted value back the way the GUC file parser does (for tests
/// and for reading `postgresql.auto.conf`).
pub fn guc_unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('\'')?.strip_suffix('\'')?;
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                if chars.next()? != '\'' {
                    return None;
                }
                out.push('\'');
            }
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// Sets (`Some`) or removes (`None`) parameters in the text of
/// `postgresql.auto.conf`, keeping every other line as it was. A set
/// parameter replaces its last assignment in place (earlier duplicates are
/// dropped, as ALTER SYSTEM does) or is appended.
pub fn edit_auto_conf(text: &str, changes: &[(&str, Option<String>)]) -> String {
    let name_of = |line: &str| -> Option<String> {
        let l = line.trim_start();
        if l.starts_with('#') || l.is_empty() {
            return None;
        }
        let end = l.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(l.len());
        Some(l[..end].to_ascii_lowercase())
    };
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (name, value) in changes {
        let name = name.to_ascii_lowercase();
        let positions: Vec<usize> =
            lines.iter().enumerate().filter(|(_, l)| name_of(l).as_deref() == Some(&name)).map(|(i, _)| i).collect();
        let new_line = value.as_ref().map(|v| format!("{name} = {}", guc_quote(v)));
        match (positions.last(), new_line) {
            (Some(&last), Some(line)) => {
                lines[last] = line;
                for &i in positions[..positions.len() - 1].iter().rev() {
                    lines.remove(i);
                }
            }
            (Some(_), None) => {
                for &i in positions.iter().rev() {
                    lines.remove(i);
                }
            }
            (None, Some(line)) => lines.push(line),
            (None, None) => {}
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// The current value of `name` in configuration file text (last wins).
pub fn read_conf_value(text: &str, name: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else { continue };
        if k.trim().eq_ignore_ascii_case(name) {
            let v = v.trim();
            // Drop a trailing comment after an unquoted value.
            let v =
                if v.starts_with('\'') { v.to_string() } else { v.split('#').next().unwrap_or("").trim().to_string() };
            found = Some(guc_unquote(&v).unwrap_or(v));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/usr/bin/dbbackup"), "/usr/bin/dbbackup");
        assert_eq!(shell_quote("%p"), "%p");
        assert_eq!(shell_quote("/backups/my repo"), "'/backups/my repo'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            shell_split(r#"a 'b c' "d \"e\"" f\ g 'it'\''s'"#).unwrap(),
            vec!["a", "b c", "d \"e\"", "f g", "it's"]
        );
        assert_eq!(shell_split("'open"), None);
    }

    #[test]
    fn shell_tokens_split_lists_and_redirections() {
        use ShellToken::*;
        let w = |s: &str| Word { text: s.into(), expands: false };
        assert_eq!(
            shell_tokens("a 'b c'&&d||e;f|g & h\ni").unwrap(),
            vec![
                w("a"),
                w("b c"),
                Op("&&"),
                w("d"),
                Op("||"),
                w("e"),
                Op(";"),
                w("f"),
                Op("|"),
                w("g"),
                Op("&"),
                w("h"),
                Op(";"),
                w("i")
            ]
        );
        assert_eq!(
            shell_tokens("x >>/var/log/a 2>&1 <in '2'>f").unwrap(),
            vec![
                w("x"),
                Redirect(">>/var/log/a".into()),
                Redirect("2>&1".into()),
                Redirect("<in".into()),
                w("2"),
                Redirect(">f".into())
            ]
        );
        assert_eq!(
            shell_tokens("R=$HOME/r \"${X}y\" 'it''s' # comment || true").unwrap(),
            vec![
                Word { text: "R=$HOME/r".into(), expands: true },
                Word { text: "${X}y".into(), expands: true },
                w("its")
            ]
        );
        for bad in ["a $(b)", "a `b`", "(a)", "a <<EOF", "a;;", "'open", "a >", "a > && b"] {
            assert!(shell_tokens(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn guc_quoting() {
        assert_eq!(guc_quote("0/3000028"), "'0/3000028'");
        assert_eq!(guc_quote("it's"), "'it''s'");
        assert_eq!(guc_quote(r"a\b"), r"'a\\b'");
        assert_eq!(sql_literal("it's"), "'it''s'");
        assert_eq!(sql_literal(r"a\b'"), r"E'a\\b'''");
    }

    #[test]
    fn auto_conf_editing_keeps_other_lines() {
        let text = "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\nwork_mem = '64MB'\narchive_mode = 'off'\narchive_mode = 'on'\n";
        let out = edit_auto_conf(
            text,
            &[("archive_mode", Some("on".into())), ("archive_command", Some("/bin/x 'y'".into())), ("nothing", None)],
        );
        assert_eq!(
            out,
            "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\nwork_mem = '64MB'\narchive_mode = 'on'\narchive_command = '/bin/x ''y'''\n"
        );
        assert_eq!(read_conf_value(&out, "archive_command").unwrap(), "/bin/x 'y'");
        let removed = edit_auto_conf(&out, &[("archive_command", None)]);
        assert!(!removed.contains("archive_command"));
        assert_eq!(read_conf_value(&removed, "work_mem").unwrap(), "64MB");
        assert_eq!(read_conf_value("port = 5433 # comment\n", "port").unwrap(), "5433");
    }

    proptest! {
        #[test]
        fn guc_then_shell_round_trip(words in proptest::collection::vec("[ -~]{0,12}", 1..5)) {
            // What PostgreSQL does with an archive_command we write: GUC
            // file parser, then the shell.
            let line = shell_join(&words);
            let through_guc = guc_unquote(&guc_quote(&line)).unwrap();
            prop_assert_eq!(&through_guc, &line);
            prop_assert_eq!(shell_split(&through_guc).unwrap(), words.clone());
            let tokens: Vec<ShellToken> =
                words.iter().map(|w| ShellToken::Word { text: w.clone(), expands: false }).collect();
            prop_assert_eq!(shell_tokens(&through_guc).unwrap(), tokens);
        }
    }
}
