//! Infix printing with minimal parentheses, shared by the graph IR and tile IR printers.

use crate::graph::BinOp;

/// Precedence levels, lowest first.
pub(crate) const P_OR: u8 = 1;
pub(crate) const P_AND: u8 = 2;
pub(crate) const P_CMP: u8 = 3;
pub(crate) const P_ADD: u8 = 4;
pub(crate) const P_MUL: u8 = 5;
pub(crate) const P_UNARY: u8 = 6;
pub(crate) const P_ATOM: u8 = 7;

/// A printed sub-expression and the precedence of its outermost operator.
pub(crate) struct Printed {
    pub text: String,
    pub prec: u8,
}

impl Printed {
    pub fn atom(text: String) -> Printed {
        Printed { text, prec: P_ATOM }
    }

    /// A number: a leading minus sign binds like a unary minus.
    pub fn number(text: String) -> Printed {
        let prec = if text.starts_with('-') { P_UNARY } else { P_ATOM };
        Printed { text, prec }
    }

    pub fn paren_if(self, cond: bool) -> String {
        if cond {
            format!("({})", self.text)
        } else {
            self.text
        }
    }

    /// `a op b` with minimal parentheses: left-associative; comparisons non-associative; a right operand
    /// starting with a minus sign is parenthesized.
    pub fn infix(a: Printed, sym: &str, b: Printed, p: u8) -> Printed {
        let pa = a.prec < p || (p == P_CMP && a.prec == p);
        let pb = b.prec <= p || b.text.starts_with('-');
        Printed { text: format!("{} {sym} {}", a.paren_if(pa), b.paren_if(pb)), prec: p }
    }
}

/// The precedence of a binary operator written infix (`None` for those printed as calls).
pub(crate) fn bin_prec(op: BinOp) -> Option<u8> {
    Some(match op {
        BinOp::Or => P_OR,
        BinOp::And => P_AND,
        BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => P_CMP,
        BinOp::Add | BinOp::Sub => P_ADD,
        BinOp::Mul | BinOp::Div | BinOp::Mod => P_MUL,
        BinOp::Pow | BinOp::Min | BinOp::Max => return None,
    })
}
