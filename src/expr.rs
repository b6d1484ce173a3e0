//! Inngest-style filter expressions (`event.data.priority >= 4 && async.data.userId
//! == event.data.userId`) translated to SQL/JSON path predicates, which PostgreSQL
//! evaluates over the document `{"event": ..., "async": ...}`.
//!
//! Supported: `== != < <= > >=`, `&& || !`, parentheses, paths with `.field`,
//! `["field"]` and `[index]`, strings in single or double quotes, numbers,
//! `true false null`. A bare path is true when its value is `true`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// 1-based character position in the expression.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at position {}", self.message, self.position)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Number(String),
    Op(&'static str),
    Dot,
    LBracket,
    RBracket,
    LParen,
    RParen,
}

struct Lexed {
    token: Token,
    position: usize,
    text: String,
}

const OPERATORS: [&str; 11] = ["==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "=", "&"];

fn lex(source: &str) -> Result<Vec<Lexed>, ExprError> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let token = if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            Token::Ident(chars[start..i].iter().collect())
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || chars[i] == '.'
                    || chars[i] == 'e'
                    || chars[i] == 'E')
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            if text.parse::<f64>().is_err() {
                return Err(ExprError {
                    position: start + 1,
                    message: format!("\"{text}\" is not a number"),
                });
            }
            Token::Number(text)
        } else if c == '"' || c == '\'' {
            i += 1;
            let mut value = String::new();
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ExprError {
                            position: start + 1,
                            message: "unterminated string".into(),
                        })
                    }
                    Some('\\') => {
                        let escaped = chars.get(i + 1).copied().ok_or(ExprError {
                            position: start + 1,
                            message: "unterminated string".into(),
                        })?;
                        value.push(match escaped {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        value.push(other);
                        i += 1;
                    }
                }
            }
            Token::Str(value)
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            match c {
                '.' => {
                    i += 1;
                    Token::Dot
                }
                '[' => {
                    i += 1;
                    Token::LBracket
                }
                ']' => {
                    i += 1;
                    Token::RBracket
                }
                '(' => {
                    i += 1;
                    Token::LParen
                }
                ')' => {
                    i += 1;
                    Token::RParen
                }
                _ => {
                    let Some(op) = OPERATORS.iter().find(|op| rest.starts_with(**op)) else {
                        return Err(ExprError {
                            position: start + 1,
                            message: format!("unexpected character '{c}'"),
                        });
                    };
                    if *op == "=" || *op == "&" {
                        let hint = if *op == "=" { "==" } else { "&&" };
                        return Err(ExprError {
                            position: start + 1,
                            message: format!("unexpected '{op}' (did you mean '{hint}'?)"),
                        });
                    }
                    i += op.len();
                    Token::Op(op)
                }
            }
        };
        out.push(Lexed {
            token,
            position: start + 1,
            text: chars[start..i].iter().collect(),
        });
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<Lexed>,
    next: usize,
    roots: &'a [&'a str],
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|l| &l.token)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |l| l.position)
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, ExprError> {
        Err(ExprError {
            position: self.position(),
            message: message.into(),
        })
    }

    fn unexpected<T>(&self, wanted: &str) -> Result<T, ExprError> {
        match self.tokens.get(self.next) {
            Some(l) => self.error(format!("expected {wanted}, found \"{}\"", l.text)),
            None => self.error(format!(
                "expected {wanted}, found the end of the expression"
            )),
        }
    }

    fn or(&mut self) -> Result<String, ExprError> {
        let mut out = self.and()?;
        while self.peek() == Some(&Token::Op("||")) {
            self.next += 1;
            out = format!("{out} || {}", self.and()?);
        }
        Ok(out)
    }

    fn and(&mut self) -> Result<String, ExprError> {
        let mut out = self.not()?;
        while self.peek() == Some(&Token::Op("&&")) {
            self.next += 1;
            out = format!("{out} && {}", self.not()?);
        }
        Ok(out)
    }

    fn not(&mut self) -> Result<String, ExprError> {
        if self.peek() == Some(&Token::Op("!")) {
            self.next += 1;
            return Ok(format!("!({})", self.not()?));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<String, ExprError> {
        let (left, left_is_path) = self.operand()?;
        let op = match self.peek() {
            Some(Token::Op(op)) if ["==", "!=", "<", "<=", ">", ">="].contains(op) => *op,
            _ => {
                return Ok(if left_is_path {
                    format!("{left} == true")
                } else {
                    left
                });
            }
        };
        self.next += 1;
        let (right, _) = self.operand()?;
        Ok(format!("{left} {op} {right}"))
    }

    /// Returns the translated operand and whether it is a path (so that a bare
    /// path can stand for "is true").
    fn operand(&mut self) -> Result<(String, bool), ExprError> {
        let Some(lexed) = self.tokens.get(self.next) else {
            return self.unexpected("a value");
        };
        let position = lexed.position;
        match lexed.token.clone() {
            Token::LParen => {
                self.next += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Token::RParen) {
                    return self.unexpected("')'");
                }
                self.next += 1;
                Ok((format!("({inner})"), false))
            }
            Token::Number(n) => {
                self.next += 1;
                Ok((n, false))
            }
            Token::Str(s) => {
                self.next += 1;
                Ok((json_string(&s), false))
            }
            Token::Ident(name) if ["true", "false", "null"].contains(&name.as_str()) => {
                self.next += 1;
                Ok((name, false))
            }
            Token::Ident(name) => {
                if !self.roots.contains(&name.as_str()) {
                    let allowed = self
                        .roots
                        .iter()
                        .map(|r| format!("\"{r}\""))
                        .collect::<Vec<_>>()
                        .join(" and ");
                    return Err(ExprError {
                        position,
                        message: format!(
                            "unknown name \"{name}\": this expression can use {allowed}"
                        ),
                    });
                }
                self.next += 1;
                Ok((self.path_rest(format!("$.{name}"))?, true))
            }
            _ => self.unexpected("a value"),
        }
    }

    fn path_rest(&mut self, mut path: String) -> Result<String, ExprError> {
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.next += 1;
                    match self.tokens.get(self.next).map(|l| l.token.clone()) {
                        Some(Token::Ident(field)) => {
                            self.next += 1;
                            if self.peek() == Some(&Token::LParen) {
                                return self.error(format!(
                                    "function calls such as \"{field}(...)\" are not supported"
                                ));
                            }
                            path.push('.');
                            path.push_str(&json_string(&field));
                        }
                        _ => return self.unexpected("a field name after '.'"),
                    }
                }
                Some(Token::LBracket) => {
                    self.next += 1;
                    match self.tokens.get(self.next).map(|l| l.token.clone()) {
                        Some(Token::Str(field)) => {
                            path.push_str(&format!(".{}", json_string(&field)))
                        }
                        Some(Token::Number(index)) if index.parse::<u32>().is_ok() => {
                            path.push_str(&format!("[{index}]"))
                        }
                        _ => return self.unexpected("a quoted field name or an index"),
                    }
                    self.next += 1;
                    if self.peek() != Some(&Token::RBracket) {
                        return self.unexpected("']'");
                    }
                    self.next += 1;
                }
                _ => return Ok(path),
            }
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Translates `source` to an SQL/JSON path predicate. `roots` are the names the
/// expression may start paths with (`event`, and `async` where a second event exists).
pub fn to_jsonpath(source: &str, roots: &[&str]) -> Result<String, ExprError> {
    let tokens = lex(source)?;
    if tokens.is_empty() {
        return Err(ExprError {
            position: 1,
            message: "the expression is empty".into(),
        });
    }
    let end = source.chars().count() + 1;
    let mut parser = Parser {
        tokens,
        next: 0,
        roots,
        end,
    };
    let out = parser.or()?;
    if parser.next < parser.tokens.len() {
        return parser.unexpected("an operator such as '&&' or '=='");
    }
    Ok(out)
}

/// A `match` path such as `"data.paymentId"`: the field of the new event that
/// must equal the same field of the triggering event.
pub fn match_path(source: &str) -> Result<Vec<String>, ExprError> {
    let source = source
        .strip_prefix("event.")
        .or_else(|| source.strip_prefix("async."))
        .unwrap_or(source);
    let mut position = 1;
    let mut path = Vec::new();
    for segment in source.split('.') {
        let valid = !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '$');
        if !valid {
            return Err(ExprError {
                position,
                message: format!(
                    "\"{segment}\" is not a field name (write a path such as \"data.paymentId\")"
                ),
            });
        }
        position += segment.chars().count() + 1;
        path.push(segment.to_string());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_paths() {
        assert_eq!(match_path("data.paymentId").unwrap(), ["data", "paymentId"]);
        assert_eq!(
            match_path("event.data.user_id").unwrap(),
            ["data", "user_id"]
        );
        let e = match_path("data..x").unwrap_err();
        assert_eq!(e.position, 6);
        assert!(match_path("data.a b").is_err());
        assert!(match_path("").is_err());
    }

    const BOTH: &[&str] = &["event", "async"];

    #[test]
    fn inngest_expressions_translate() {
        assert_eq!(
            to_jsonpath(
                "event.data.priority >= 4 && async.data.userId == event.data.userId",
                BOTH
            )
            .unwrap(),
            r#"$.event."data"."priority" >= 4 && $.async."data"."userId" == $.event."data"."userId""#
        );
        assert_eq!(
            to_jsonpath(
                "event.data.plan == 'pro' || event.data.plan == \"team\"",
                BOTH
            )
            .unwrap(),
            r#"$.event."data"."plan" == "pro" || $.event."data"."plan" == "team""#
        );
        assert_eq!(
            to_jsonpath("!(event.data.count > 10)", BOTH).unwrap(),
            r#"!(($.event."data"."count" > 10))"#
        );
        assert_eq!(
            to_jsonpath("event.data.vip", BOTH).unwrap(),
            r#"$.event."data"."vip" == true"#
        );
        assert_eq!(
            to_jsonpath(
                "event.data['user id'] != null && event.data.items[0].sku == 'a'",
                BOTH
            )
            .unwrap(),
            r#"$.event."data"."user id" != null && $.event."data"."items"[0]."sku" == "a""#
        );
        assert_eq!(
            to_jsonpath("event.data.n < -1.5", BOTH).unwrap(),
            r#"$.event."data"."n" < -1.5"#
        );
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = to_jsonpath("event.data.a == 1 && user.id == 2", BOTH).unwrap_err();
        assert_eq!(e.position, 22);
        assert!(e.message.contains("unknown name \"user\""), "{e}");

        let e = to_jsonpath("async.data.x == 1", &["event"]).unwrap_err();
        assert!(e.message.contains("can use \"event\""), "{e}");

        let e = to_jsonpath("event.data.a = 1", BOTH).unwrap_err();
        assert_eq!(e.position, 14);
        assert!(e.message.contains("did you mean '=='"), "{e}");

        let e = to_jsonpath("event.data.a == ", BOTH).unwrap_err();
        assert!(e.message.contains("end of the expression"), "{e}");

        let e = to_jsonpath("(event.data.a == 1", BOTH).unwrap_err();
        assert!(e.message.contains("expected ')'"), "{e}");

        let e = to_jsonpath("event.data.name == 'abc", BOTH).unwrap_err();
        assert_eq!(e.position, 20);
        assert!(e.message.contains("unterminated"), "{e}");

        let e = to_jsonpath("event.data.a == 1 event", BOTH).unwrap_err();
        assert!(e.message.contains("found \"event\""), "{e}");

        let e = to_jsonpath("event.data.tags.contains('x')", BOTH).unwrap_err();
        assert!(e.message.contains("not supported"), "{e}");

        assert!(to_jsonpath("   ", BOTH)
            .unwrap_err()
            .message
            .contains("empty"));
        assert!(to_jsonpath("event.data.a == 1 # 2", BOTH)
            .unwrap_err()
            .message
            .contains("'#'"));
    }
}
