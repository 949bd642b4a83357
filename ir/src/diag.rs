//! The one diagnostic type of `kc`, and the catalogue of stable error codes.
//!
//! A diagnostic is plain data: a code, a message, a primary labelled span, secondary labels, and notes
//! (a note starting with `help: ` renders as a help line). Rendering to text is the frontend's job.

use crate::span::Span;
use std::fmt;

macro_rules! codes {
    ($( $name:ident = $code:literal : $summary:literal, )*) => {
        /// A stable diagnostic code. Every code is documented with an example in `docs/errors.md`.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $( $name, )* }

        impl Code {
            pub const ALL: &'static [Code] = &[ $( Code::$name, )* ];

            /// The code as printed: `E0001`.
            pub fn as_str(self) -> &'static str {
                match self { $( Code::$name => $code, )* }
            }

            /// A one-line description of the error class.
            pub fn summary(self) -> &'static str {
                match self { $( Code::$name => $summary, )* }
            }
        }
    };
}

codes! {
    // Lexing.
    InvalidToken = "E0001": "a character or token that is not part of the language",
    BadNumber = "E0002": "a malformed or out-of-range number literal",
    UnterminatedString = "E0003": "a string literal without its closing quote",
    // Parsing.
    UnexpectedToken = "E0010": "a token where the grammar expects something else",
    UnexpectedEof = "E0011": "the file ends in the middle of a construct",
    TooDeep = "E0012": "an expression or block nested deeper than the compiler's limit",
    // Files.
    UseNotFound = "E0020": "a `use` names a file that cannot be read",
    UseCycle = "E0021": "files that `use` each other in a cycle",
    // Names.
    UnknownName = "E0100": "a name that is not defined here",
    DuplicateItem = "E0101": "two kernels or fns with the same name",
    DuplicateParam = "E0102": "two parameters or outputs with the same name",
    UnknownFunction = "E0103": "a call to a function that does not exist",
    UnknownType = "E0104": "a type name that is not an element type",
    Redefinition = "E0105": "a `let` that redefines a name already bound in the same scope",
    Recursion = "E0106": "a fn that calls itself, directly or not",
    UnknownKernel = "E0107": "a kernel name that the file does not define",
    NotAValue = "E0108": "a name used as a value that is not one (a kernel, a fn, a tuple)",
    // Calls and arity.
    ArgCount = "E0200": "a call with the wrong number of arguments",
    UnknownNamedArg = "E0201": "a named argument the function does not take",
    DuplicateNamedArg = "E0202": "a named argument given twice",
    PositionalAfterNamed = "E0203": "a positional argument after a named one",
    NotConstant = "E0204": "an argument that must be known at compile time and is not",
    AxisOutOfRange = "E0205": "an axis outside the tensor's dimensions",
    IndexCount = "E0206": "an element access with the wrong number of indices",
    TupleArity = "E0207": "a tuple destructured into the wrong number of names, or a fn without a return",
    TupleAsValue = "E0208": "a tuple used where one value is expected",
    // Shapes.
    BroadcastMismatch = "E0300": "shapes that do not broadcast",
    MatmulMismatch = "E0301": "matmul operands whose contracted dims differ",
    ShapeMismatch = "E0302": "a value whose shape differs from the declared one",
    ReshapeMismatch = "E0303": "a reshape that changes the number of elements",
    ConcatMismatch = "E0304": "concat operands whose other dims differ",
    RankMismatch = "E0305": "an operation on a tensor of the wrong rank",
    BadPermutation = "E0306": "a transpose permutation that is not a permutation of the axes",
    // Index notation and ranges.
    RangeNotInferred = "E0400": "an index whose range cannot be inferred",
    RangeConflict = "E0401": "an index that gets two different ranges",
    DuplicateIndex = "E0402": "an index variable bound twice",
    BadIndexTarget = "E0403": "an index-notation target whose indices are not plain names",
    BadRange = "E0404": "a range that does not start at 0 or whose end is not a dim",
    LoopBound = "E0405": "a `for` bound that is not a literal or a fixed dim",
    UnrollLimit = "E0406": "a kernel whose unrolled size passes the compiler's limit",
    // Types.
    TypeMismatch = "E0500": "an operation on values of types it does not take",
    IndexNotInt = "E0501": "an index that is not an integer",
    CondNotBool = "E0502": "a condition that is not a bool",
    BadStorage = "E0503": "a storage annotation that cannot apply here",
    // Dims and constraints.
    BadConstraint = "E0600": "a `where` constraint that is not a comparison of dims",
    ConstraintFalse = "E0601": "constraints that can never hold",
    OutputDimUnbound = "E0602": "an output dimension that cannot be computed from the inputs",
    BadDim = "E0603": "a dimension expression that is not made of dims and integers",
    // Schedule hints.
    UnknownHint = "E0604": "a schedule hint that kc does not know",
    BadHint = "E0605": "a schedule hint with arguments it does not take",
    NoTiling = "E0606": "a fusion group that no tiling template handles",
    OverCapacity = "E0607": "tiles whose buffers do not fit the target's memories",
    // Assignments.
    AssignInput = "E0700": "an assignment to a read-only input",
    AssignTwice = "E0701": "an output or inout assigned more than once",
    NotAssigned = "E0702": "an output or inout never assigned",
    AssignUnknown = "E0703": "an assignment to a name that is not defined",
    ReadBeforeAssign = "E0704": "an output read before it is assigned",
    RebindShape = "E0705": "a rebinding that changes a value's shape or type",
    // Launch and run time.
    MissingArg = "E0800": "a launch that does not give a parameter",
    ArgShape = "E0801": "a tensor whose shape does not fit the signature",
    ConstraintBroken = "E0802": "a launch whose dims break a `where` constraint",
    IndexOutOfRange = "E0803": "an index read from data that is out of range",
    DivByZero = "E0804": "an integer division by zero",
    ArgDType = "E0805": "a tensor of the wrong element type",
    InexactDim = "E0806": "a dim division that does not divide exactly",
    UnknownArg = "E0807": "a launch argument that names no parameter",
    ResourceLimit = "E0808": "a launch that would need more memory than allowed",
    // Internal.
    Internal = "E0900": "an internal compiler error (a bug in kc)",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One error or warning, pointing at its cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    /// The primary span, with an optional label (may be empty).
    pub primary: Label,
    pub secondary: Vec<Label>,
    /// Notes; one starting with `help: ` renders as a help line.
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(code: Code, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            primary: Label { span, message: String::new() },
            secondary: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Sets the label under the primary span.
    pub fn with_label(mut self, message: impl Into<String>) -> Diagnostic {
        self.primary.message = message.into();
        self
    }

    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.secondary.push(Label { span, message: message.into() });
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.notes.push(format!("help: {}", help.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// A one-line form, for logs and panics-free fallbacks; the frontend renders the full form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error[{}]: {}", self.code, self.message)
    }
}
