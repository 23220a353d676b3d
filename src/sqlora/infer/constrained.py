"""Schema-constrained decoding: the next token may not start or continue an identifier the question's
database cannot have (``predict.constrained``), in both engines, for greedy, beam and sampling.

A small incremental SQL lexer (:class:`SqlState`) follows what a row has written so far: string
literals and double-quoted words are free (SQLite reads ``"x"`` as a string when no column is called
x, and Spider's gold SQL quotes its strings so); a word is checked against what may stand where it is:

- after FROM / JOIN / a comma of the FROM list: a table (or a CTE) name;
- after ``alias.`` or ``table.``: a column of that table (of the alias's table once the FROM clause
  has named it; of any table while the alias is still to be defined, as in ``SELECT T1.a FROM t AS T1``);
- after AS, or straight after a table in the FROM clause: a new alias, free;
- elsewhere: a keyword, an SQLite function, a table, a column, or an alias defined so far; a word still
  to become an alias defined further on (``T1`` before ``FROM t AS T1``, or in an ON clause before its
  JOIN, which SQLite accepts) must be a letter and digits, and is checked once the candidate ends
  (:meth:`SqlState.resolves`). Names a subquery makes (``SELECT x AS n``) can be used once written:
  before it, ``n`` or ``a.n`` of ``FROM (SELECT x AS n ...) AS a`` are not allowed;
- numbers, operators and punctuation are free; matching is case-insensitive; backtick- and
  bracket-quoted identifiers are checked like words.

A partial word passes while it is the prefix of a name that may stand there, so a row can always finish
what it starts. Checking a token means feeding its text to a copy of the row's state; tokens are tried
in the model's order of preference, so greedy and beam search cost a few checks per row and step.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch

from sqlora.data.schema import DatabaseSchema

# SQLite's keywords (sqlite.org/lang_keywords.html).
KEYWORDS = frozenset(
    """
abort action add after all alter always analyze and as asc attach autoincrement before begin between by cascade
case cast check collate column commit conflict constraint create cross current current_date current_time
current_timestamp database default deferrable deferred delete desc detach distinct do drop each else end escape
except exclude exclusive exists explain fail filter first following for foreign from full generated glob group
groups having if ignore immediate in index indexed initially inner insert instead intersect into is isnull join
key last left like limit match materialized natural no not nothing notnull null nulls of offset on or order others
outer over partition plan pragma preceding primary query raise range recursive references regexp reindex release
rename replace restrict returning right rollback row rows savepoint select set table temp temporary then ties to
transaction trigger unbounded union unique update using vacuum values view virtual when where window with without
true false
""".split()
)
_CLAUSE_ENDS_FROM = frozenset("where group order having limit union intersect except select window values".split())
ALIAS_SHAPE = re.compile(r"[a-z][0-9]*")  # an alias used before the FROM item that defines it: T1, t2, a
ANY = None  # columns_for(): an alias of a subquery or a CTE, whose columns are not known here


@lru_cache(maxsize=1)
def sqlite_functions() -> frozenset[str]:
    """The functions the sandbox's SQLite has (its own list, so it is right for the library in use)."""
    with sqlite3.connect(":memory:") as conn:
        return frozenset(name.lower() for (name,) in conn.execute("SELECT name FROM pragma_function_list") if name.isidentifier())


def _prefixes(words) -> frozenset[str]:
    return frozenset(w[:n] for w in words for n in range(1, len(w) + 1))


@dataclass(frozen=True)
class SchemaNames:
    """A database's tables and their columns, lower-cased: what constrained decoding checks against."""

    tables: dict  # table -> frozenset of its columns

    @classmethod
    def of(cls, schema: DatabaseSchema) -> SchemaNames:
        columns: dict[str, set[str]] = {t.lower(): set() for t in schema.tables}
        for column in schema.columns:
            columns[schema.tables[column.table].lower()].add(column.name.lower())
        return cls({t: frozenset(c) for t, c in columns.items()})

    def __hash__(self) -> int:
        return id(self)

    @cached_property
    def columns(self) -> frozenset[str]:
        return frozenset(c for cs in self.tables.values() for c in cs)

    @cached_property
    def table_prefixes(self) -> frozenset[str]:
        return _prefixes(self.tables)

    @cached_property
    def column_prefixes(self) -> frozenset[str]:
        return _prefixes(self.columns)

    @cached_property
    def words(self) -> frozenset[str]:
        """What may stand as a bare word: keywords, functions, tables, columns."""
        return KEYWORDS | sqlite_functions() | frozenset(self.tables) | self.columns

    @cached_property
    def word_prefixes(self) -> frozenset[str]:
        return _prefixes(self.words)

    def prefixes_of(self, table: str) -> frozenset[str]:
        return self._table_column_prefixes(table)

    @lru_cache(maxsize=None)  # noqa: B019 - one small set per table, kept as long as the schema
    def _table_column_prefixes(self, table: str) -> frozenset[str]:
        return _prefixes(self.tables[table])


@dataclass
class _Scope:
    """One level of parentheses: a query (or the statement) and where it stands."""

    in_from: bool = False  # in its FROM clause (a comma introduces a table)
    on: bool = False  # in a JOIN's ON condition (a comma does not introduce a table)
    in_with: bool = False  # in a WITH list (a comma introduces a CTE name)
    from_subquery: bool = False  # this parenthesis opened where a table may stand: FROM (SELECT ...)


class SqlState:
    """Where a row's SQL stands, fed one text piece at a time (:meth:`feed` returns False at the first
    character that makes an identifier impossible; the state is then unusable)."""

    __slots__ = (
        "names",
        "quote",
        "quoted",
        "word",
        "number",
        "qualifier",
        "context",
        "scopes",
        "aliases",
        "ctes",
        "last_table",
        "pending",
        "bound",
        "ident",
        "last_name",
    )

    def __init__(self, names: SchemaNames):
        self.names = names
        self.quote = ""  # the character closing the quoted text we are in ("" outside quotes)
        self.quoted = ""  # the text inside the quotes
        self.ident = False  # the quotes are an identifier's (backticks, brackets; double quotes after "T1." or FROM)
        self.last_name = ""  # the quoted identifier just closed ("" once anything else follows): a '.' may qualify with it
        self.word = ""  # the word being written (outside quotes)
        self.number = False  # the word is a number (a '.' continues it)
        self.qualifier: str | None = None  # the word follows "qualifier."
        self.context = "any"  # any | table | alias | after_table | cte
        self.scopes = [_Scope()]
        self.aliases: dict[str, str | None] = {}  # alias -> its table (None: a subquery or a column alias)
        self.ctes: set[str] = set()
        self.last_table: str | None = None  # the table (None: subquery) just named in a FROM clause
        self.pending: list[tuple[str, str]] = []  # (alias, column) used before the alias was defined
        self.bound = "column"  # what AS names: table (an alias of a FROM item) | column

    def copy(self) -> SqlState:
        new = SqlState.__new__(SqlState)
        for name in SqlState.__slots__:
            setattr(new, name, getattr(self, name))
        new.scopes = [_Scope(**vars(s)) for s in self.scopes]
        new.aliases, new.ctes, new.pending = dict(self.aliases), set(self.ctes), list(self.pending)
        return new

    # --- what may stand here -------------------------------------------------------------------------

    def columns_for(self, qualifier: str) -> frozenset[str] | None:
        """The columns ``qualifier.`` may be followed by (ANY: unknown, a subquery's or a CTE's)."""
        if qualifier in self.aliases:
            table = self.aliases[qualifier]
            return self.names.tables[table] if table in self.names.tables else ANY
        if qualifier in self.names.tables:
            return self.names.tables[qualifier]
        if qualifier in self.ctes:
            return ANY
        return self.names.columns  # an alias defined further on: any column, checked by resolves()

    def _column_prefix_ok(self, qualifier: str, prefix: str) -> bool:
        if qualifier in self.aliases or qualifier in self.names.tables:
            table = self.aliases.get(qualifier, qualifier)
            return table not in self.names.tables or prefix in self.names.prefixes_of(table)
        return qualifier in self.ctes or prefix in self.names.column_prefixes

    def _partial_ok(self, prefix: str, quoted: bool) -> bool:
        if self.qualifier is not None:
            return self._column_prefix_ok(self.qualifier, prefix)
        if self.context == "table":
            return prefix in self.names.table_prefixes or any(c.startswith(prefix) for c in self.ctes)
        if self.context in ("alias", "after_table", "cte"):
            return True
        known = self.names.column_prefixes | self.names.table_prefixes if quoted else self.names.word_prefixes
        return (
            prefix in known
            or any(a.startswith(prefix) for a in self.aliases)
            or any(c.startswith(prefix) for c in self.ctes)
            or (not quoted and ALIAS_SHAPE.fullmatch(prefix) is not None)
        )

    # --- feeding text ----------------------------------------------------------------------------------

    def feed(self, text: str) -> bool:
        for ch in text:
            if not self._char(ch):
                return False
        return True

    def _char(self, ch: str) -> bool:
        if self.quote:
            if ch == self.quote:
                self.quote, name, self.quoted = "", self.quoted.lower(), ""
                self.last_name = name if ch != "'" else ""
                if not self.ident:
                    return True
                return self._complete(name, quoted=True, next_char="")
            self.quoted += ch
            return not self.ident or self._partial_ok(self.quoted.lower(), quoted=True)
        last_name, self.last_name = self.last_name, ""
        if ch.isalnum() or ch == "_" or (self.number and ch == "."):
            if not self.word:
                self.number = ch.isdigit() and self.qualifier is None
            self.word += ch
            return self.number or self._partial_ok(self.word.lower(), quoted=False)
        if self.word:
            word, self.word = self.word.lower(), ""
            if self.number:
                self.number = False
                self.context = "any"
            elif not self._complete(word, quoted=False, next_char=ch):
                return False
        elif self.qualifier is not None and not ch.isspace():
            if ch not in '*`["':
                return False  # "T1." must be followed by a column or *
            if ch == "*":
                self.qualifier = None
        elif ch == "." and last_name:  # `T1`.name, "singer".name
            if not (last_name in self.names.tables or last_name in self.aliases or last_name in self.ctes):
                return False
            self.qualifier = last_name
            return True
        return self._punctuation(ch)

    def _punctuation(self, ch: str) -> bool:
        scope = self.scopes[-1]
        if ch.isspace():
            return True
        if ch in "'\"`[":
            self.quote = "]" if ch == "[" else ch
            self.ident = ch in "`[" or (ch == '"' and (self.qualifier is not None or self.context == "table"))
            if not self.ident:
                self.context = "any"
        elif ch == "(":
            self.scopes.append(_Scope(from_subquery=self.context == "table"))
            self.context = "any"
        elif ch == ")":
            closed = self.scopes.pop() if len(self.scopes) > 1 else _Scope()
            if closed.from_subquery:
                self.context, self.last_table, self.bound = "after_table", None, "table"
            else:
                self.context = "any"
        elif ch == ",":
            self.context = "cte" if scope.in_with else "table" if scope.in_from and not scope.on else "any"
        elif ch == "." and self.qualifier is None:
            return False  # a '.' after something that is no table or alias ("'a'.", ").")
        elif ch != ".":
            self.context = "any"
        return True

    def _complete(self, word: str, quoted: bool, next_char: str) -> bool:
        """A word (or quoted identifier) is complete: is it allowed where it stands? Then what follows."""
        scope = self.scopes[-1]
        if self.qualifier is not None:
            qualifier, self.qualifier = self.qualifier, None
            columns = self.columns_for(qualifier)
            if columns is not ANY and word not in columns:
                return False
            if qualifier not in self.aliases and qualifier not in self.names.tables and qualifier not in self.ctes:
                self.pending.append((qualifier, word))
            self.context = "any"
            return True
        if next_char == ".":  # a qualifier: a table, an alias, or an alias still to be defined
            if not (word in self.names.tables or word in self.aliases or word in self.ctes or (not quoted and ALIAS_SHAPE.fullmatch(word))):
                return False
            self.qualifier = word
            return True
        context, self.context = self.context, "any"
        if context == "table":
            if word not in self.names.tables and word not in self.ctes:
                return False
            self.context, self.last_table, self.bound = "after_table", word, "table"
            return True
        if context == "cte":
            self.ctes.add(word)
            return True
        if context == "alias":
            self.aliases[word] = self.last_table if self.bound == "table" else None
            return True
        if context == "after_table" and (quoted or word not in KEYWORDS):
            self.aliases[word] = self.last_table  # FROM singer T1
            return True
        if not quoted and word in KEYWORDS:
            self._keyword(word, scope, after_table=context == "after_table")
            return True
        return (
            word in self.names.words or word in self.aliases or word in self.ctes
            if not quoted
            else (word in self.names.tables or word in self.names.columns or word in self.aliases or word in self.ctes)
        )

    def _keyword(self, word: str, scope: _Scope, after_table: bool) -> None:
        if word == "from":
            scope.in_from, scope.on = True, False
            self.context = "table"
        elif word == "join":
            scope.in_from, scope.on = True, False
            self.context = "table"
        elif word in ("on", "using"):
            scope.on = True
        elif word == "as":
            self.context = "alias"
            if not after_table:
                self.bound = "column"
        elif word == "with":
            scope.in_with = True
            self.context = "cte"
        elif word == "recursive" and scope.in_with:
            self.context = "cte"
        elif word in _CLAUSE_ENDS_FROM:
            scope.in_from = scope.on = False
            if word == "select":
                scope.in_with = False

    # --- the end -----------------------------------------------------------------------------------------

    def finished(self) -> SqlState | None:
        """The state once the text ends here: the last word complete (None: the SQL may not end here)."""
        if self.quote and self.ident:
            return None
        end = self.copy()
        return end if end._char(" ") and end.qualifier is None else None

    def can_end(self) -> bool:
        """May the SQL end here (every identifier complete and allowed)?"""
        return self.finished() is not None

    def resolves(self) -> bool:
        """Ending here, every alias used before its definition is defined, with the columns asked of it."""
        end = self.finished()
        if end is None:
            return False
        for alias, column in end.pending:
            if alias not in end.aliases and alias not in end.ctes and alias not in end.names.tables:
                return False
            columns = end.columns_for(alias)
            if columns is not ANY and column not in columns:
                return False
        return True


def state_of(names: SchemaNames, text: str) -> SqlState | None:
    """The state after ``text`` (None: it already breaks the schema)."""
    state = SqlState(names)
    return state if state.feed(text) else None


def sql_resolves(names: SchemaNames, sql: str) -> bool:
    """Does a finished statement pass the schema check, aliases resolved?"""
    state = state_of(names, sql)
    return state is not None and state.resolves()


class TokenChecker:
    """Which next tokens a row may take, given its state: the text of each token (as it continues a
    row), learnt lazily, and the checks in the model's order of preference."""

    FIRST = 8  # tokens looked at before sorting the whole vocabulary
    SAMPLED = 256  # sampling draws from the allowed tokens among this many most probable

    def __init__(self, tokenizer, eos: set[int]):
        self.tokenizer, self.eos = tokenizer, eos
        self._anchor = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("a")[:1])[0] if tokenizer.tokenize("a") else 0
        self._anchor_text = tokenizer.decode([self._anchor], skip_special_tokens=True)
        self._texts: dict[int, str] = {}

    def text(self, token: int) -> str:
        """What ``token`` adds to a row's text (a SentencePiece word's leading space included)."""
        if token not in self._texts:
            both = self.tokenizer.decode([self._anchor, token], skip_special_tokens=True)
            self._texts[token] = both[len(self._anchor_text) :] if both.startswith(self._anchor_text) else both
        return self._texts[token]

    def allows(self, state: SqlState, token: int) -> bool:
        if token in self.eos:
            return state.can_end()
        piece = self.text(token)
        return not piece or state.copy().feed(piece)

    def first_allowed(self, state: SqlState, scores: torch.Tensor, count: int) -> list[int]:
        """The ``count`` best tokens (by ``scores``, one row) the state allows, best first: for one, among
        the FIRST most probable; for a beam search's several, among the SAMPLED most probable (fewer
        when fewer are there: looking further costs a pass over the vocabulary per beam and step, for
        tokens beam search would not keep). When none is there, the best allowed token anywhere, or
        none at all: a dead end, which the engines release."""
        window = self.FIRST if count == 1 else self.SAMPLED
        top = scores.topk(min(window, scores.shape[-1])).indices.tolist()
        found: list[int] = []
        for token in top:
            if self.allows(state, token):
                found.append(token)
                if len(found) == count:
                    break
        if found:
            return found
        for token in scores.argsort(descending=True).tolist()[len(top) :]:
            if self.allows(state, token):
                return [token]
        return []

    def nucleus(self, state: SqlState, logits: torch.Tensor, temperature: float, top_p: float) -> tuple[list[int], list[float]]:
        """Sampling: the tokens to draw from and their (unnormalised) masses, one row. Among the
        ``SAMPLED`` most probable tokens (temperature applied), the allowed ones, most probable first,
        until their mass reaches ``top_p`` of the candidates' mass less the forbidden mass met so far:
        the nucleus of the model's distribution over what the schema allows, checked lazily."""
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        values, indexes = probs.topk(min(self.SAMPLED, probs.shape[-1]))
        tokens: list[int] = []
        masses: list[float] = []
        kept = forbidden = 0.0
        total = float(values.sum())
        for mass, token in zip(values.tolist(), indexes.tolist()):
            if tokens and kept >= top_p * (total - forbidden):
                break
            if self.allows(state, token):
                tokens.append(token)
                masses.append(mass)
                kept += mass
            else:
                forbidden += mass
        return tokens, masses


class RowConstraint:
    """One row's state, kept in step with the text it has written (decoded in full each step, so a
    token that completes a character of an earlier byte token is read right)."""

    __slots__ = ("names", "text", "state")

    def __init__(self, names: SchemaNames):
        self.names, self.text, self.state = names, "", SqlState(names)

    def copy(self) -> RowConstraint:
        new = RowConstraint.__new__(RowConstraint)
        new.names, new.text, new.state = self.names, self.text, self.state.copy() if self.state is not None else None
        return new

    def advance(self, text: str) -> None:
        if text.startswith(self.text):
            state = self.state
            if state is not None and not state.feed(text[len(self.text) :]):
                state = None
        else:
            state = state_of(self.names, text)
        self.text, self.state = text, state
