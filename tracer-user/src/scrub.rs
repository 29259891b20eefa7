//! Secrets never leave: a target's command line is scrubbed before it goes anywhere (events,
//! the live view, the agent's stream, webhook bodies, logs), as Datadog's process agent does
//! by default. KAFKA_OPTS often carries `-Djavax.net.ssl.keyStorePassword=...`, and
//! `--override sasl.jaas.config=... password="..."` puts a JAAS password on the line.
//!
//! What is masked: the value after any `NAME=` whose name contains a sensitive word
//! (case-insensitive: password, secret, token, credential, key, and the words configured with
//! `--scrub-word`), to the end of the argument; the argument after a flag `-NAME`/`--NAME`
//! whose name contains one; and the password of `user:pass@` in URLs.

/// What replaces a secret.
pub const MASK: &str = "********";

/// Words that make a name sensitive by default.
const DEFAULT_WORDS: [&str; 5] = ["password", "secret", "token", "credential", "key"];

/// Masks secrets in command lines and URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scrubber {
    /// Lower-case words; a name containing one is sensitive.
    words: Vec<String>,
}

impl Default for Scrubber {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl Scrubber {
    /// The default words plus `extra` (case-insensitive; empty ones are ignored).
    pub fn new(extra: &[String]) -> Self {
        let mut words: Vec<String> = DEFAULT_WORDS.iter().map(|w| (*w).to_owned()).collect();
        for word in extra {
            let word = word.trim().to_lowercase();
            if !word.is_empty() && !words.contains(&word) {
                words.push(word);
            }
        }
        Self { words }
    }

    fn sensitive(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        self.words.iter().any(|w| name.contains(w.as_str()))
    }

    /// `line` with every secret masked. Arguments are separated by whitespace (the command
    /// line as /proc shows it, NULs turned into spaces); a quote opened in an argument extends
    /// it to its closing quote, so `password="a b"` is masked whole.
    pub fn command_line(&self, line: &str) -> String {
        let mut out = String::with_capacity(line.len());
        let mut rest = line;
        let mut mask_next = false;
        loop {
            let start = rest.len() - rest.trim_start().len();
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            if rest.is_empty() {
                return out;
            }
            let end = argument_end(rest);
            let arg = &rest[..end];
            rest = &rest[end..];
            if mask_next {
                out.push_str(MASK);
                mask_next = false;
            } else if let Some(at) = self.secret_value_at(arg) {
                out.push_str(&urls(&arg[..at]));
                out.push_str(MASK);
            } else {
                // `--password hunter2`, `-Dapi.key hunter2`: the next argument is the value.
                mask_next = arg.starts_with('-') && self.sensitive(arg.trim_start_matches('-'));
                out.push_str(&urls(arg));
            }
        }
    }

    /// Where the value of the first `NAME=` with a sensitive name begins in `arg`. A name
    /// starts after the previous `=`, `,`, `;`, `&`, `?`, quote or whitespace
    /// (`-Dk=password=x`, `url?user=a&token=x`).
    fn secret_value_at(&self, arg: &str) -> Option<usize> {
        let mut name_start = 0;
        for (i, c) in arg.char_indices() {
            match c {
                '=' => {
                    if self.sensitive(&arg[name_start..i]) {
                        return Some(i + 1);
                    }
                    name_start = i + 1;
                }
                ',' | ';' | '&' | '?' | '"' | '\'' => name_start = i + 1,
                c if c.is_whitespace() => name_start = i + c.len_utf8(),
                _ => {}
            }
        }
        None
    }
}

/// `arg` with the password of every `scheme://user:password@` masked.
fn urls(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(MASK);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &rest[authority_end..];
    }
    out.push_str(rest);
    out
}

/// A URL as logs and errors may show it: the scheme, host and port, the user's password
/// masked; the path and query are left out, as a webhook's path is often its secret (Slack's
/// hooks).
pub fn url_for_logs(url: &str) -> String {
    let shown = match url.find("://") {
        Some(at) => {
            let authority_end = url[at + 3..]
                .find(['/', '?', '#'])
                .map_or(url.len(), |end| at + 3 + end);
            let elided = if authority_end < url.len() {
                "/..."
            } else {
                ""
            };
            format!("{}{elided}", &url[..authority_end])
        }
        None => return MASK.to_owned(),
    };
    urls(&shown)
}

/// The byte where the argument at the start of `text` ends: the first whitespace outside
/// quotes (an unclosed quote runs to the end).
fn argument_end(text: &str) -> usize {
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c.is_whitespace() => return i,
            _ => {}
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrub(line: &str) -> String {
        Scrubber::default().command_line(line)
    }

    #[test]
    fn java_properties_with_sensitive_names_are_masked() {
        assert_eq!(
            scrub(
                "java -Xmx1g -Djavax.net.ssl.keyStorePassword=hunter2 -Dlog.dir=/var/log kafka.Kafka"
            ),
            "java -Xmx1g -Djavax.net.ssl.keyStorePassword=******** -Dlog.dir=/var/log kafka.Kafka"
        );
        assert_eq!(
            scrub("-DAPI_TOKEN=abc -Dmy.Secret=x -Daws.credentials=y -Dssl.key=z"),
            "-DAPI_TOKEN=******** -Dmy.Secret=******** -Daws.credentials=******** -Dssl.key=********"
        );
    }

    #[test]
    fn kafka_overrides_and_jaas_configs_are_masked() {
        // As /proc shows an --override whose value holds spaces: one argument, NULs as spaces.
        let line = "kafka.Kafka server.properties --override ssl.key.password=hunter2 --override sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"admin\" password=\"hunter 2\"; --override broker.id=1";
        let scrubbed = scrub(line);
        assert!(!scrubbed.contains("hunter"), "{scrubbed}");
        assert_eq!(
            scrubbed,
            "kafka.Kafka server.properties --override ssl.key.password=******** --override sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"admin\" password=******** --override broker.id=1"
        );
    }

    #[test]
    fn flags_with_sensitive_names_mask_their_argument() {
        assert_eq!(
            scrub("server --password hunter2 --port 9092"),
            "server --password ******** --port 9092"
        );
        assert_eq!(scrub("tool --api-key=abc -v"), "tool --api-key=******** -v");
        assert_eq!(scrub("--keep going"), "--keep going", "no word in `keep`");
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            scrub(
                "mirror --source jdbc:postgresql://app:hunter2@db:5432/x?ssl=true --target http://host/p"
            ),
            "mirror --source jdbc:postgresql://app:********@db:5432/x?ssl=true --target http://host/p"
        );
        assert_eq!(
            scrub("--url=https://u:p@h/q?access_token=abc"),
            "--url=https://u:********@h/q?access_token=********"
        );
        assert_eq!(scrub("ssh://git@host/repo"), "ssh://git@host/repo");
    }

    #[test]
    fn nested_and_query_names_are_found() {
        assert_eq!(
            scrub("-Dopts=a=1,password=x"),
            "-Dopts=a=1,password=********"
        );
        assert_eq!(
            scrub("http://h/cb?user=a&token=b"),
            "http://h/cb?user=a&token=********"
        );
    }

    #[test]
    fn whitespace_and_harmless_lines_are_kept() {
        let line = "java  -cp libs/* kafka.Kafka config/server.properties";
        assert_eq!(scrub(line), line);
        assert_eq!(scrub(""), "");
        assert_eq!(scrub("it's -Dtoken=x"), "it's -Dtoken=********");
    }

    #[test]
    fn configured_words_add_to_the_defaults() {
        let scrubber = Scrubber::new(&["JAAS".to_owned(), " ".to_owned()]);
        assert_eq!(
            scrubber.command_line("-Dsasl.jaas.config=x -Dtoken=y -Dname=z"),
            "-Dsasl.jaas.config=******** -Dtoken=******** -Dname=z"
        );
    }

    #[test]
    fn urls_for_logs_show_the_host_only() {
        assert_eq!(
            url_for_logs("https://bot:hunter2@hooks.example.com:8443/services/T0/B0/XYZ"),
            "https://bot:********@hooks.example.com:8443/..."
        );
        assert_eq!(
            url_for_logs("http://127.0.0.1:9000"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(url_for_logs("not a url"), MASK);
    }
}
