output "rule_arn" {
  value = aws_cloudwatch_event_rule.forward.arn
}

output "role_arn" {
  value = aws_iam_role.forward.arn
}
