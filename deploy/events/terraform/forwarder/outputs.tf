output "rule_arn" {
  value = aws_cloudwatch_event_rule.forward.arn
}

output "role_arn" {
  value = aws_iam_role.forward.arn
}

output "dead_letter_queue_arn" {
  value = aws_sqs_queue.forward_dlq.arn
}
